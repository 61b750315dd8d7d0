"""Identifiers for workflows and nodes.

Without a seed, ids are time-ordered (UUID version 7 layout: 48 bits of Unix milliseconds, a
12-bit counter that keeps ids from one process strictly increasing within a millisecond, then
random bits), so rows inserted together sit together in B-tree indexes. Python 3.11 has no
``uuid.uuid7``; this is a small generator of our own.

With a seed (a ``random.Random``), every id is ``UUID(int=rng.getrandbits(128))``, as in the
original, so the same seed and template reproduce the same ids.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid
from typing import Any

from ..exceptions import WorkflowDoesNotExist

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


def seeded_random(seed: random.Random | str | int | None) -> random.Random | None:
    """A ``random.Random`` for ``seed``: the object itself, a new one seeded with a str/int, or None.

    To derive a workflow id from the same seed as its nodes, convert once and share the object:
    ``rng = seeded_random(seed); wid = new_id(rng); materialize(..., seed=rng)``.
    """
    if seed is None or isinstance(seed, random.Random):
        return seed
    if isinstance(seed, str | int) and not isinstance(seed, bool):
        return random.Random(seed)
    raise TypeError(f"seed must be a random.Random, a str or None, not {type(seed).__name__}")


def new_id(rng: random.Random | None = None) -> uuid.UUID:
    """A new id: drawn from ``rng`` when given, else a time-ordered UUIDv7."""
    if rng is not None:
        return uuid.UUID(int=rng.getrandbits(128))
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            # Start low in the counter space so a burst in the same millisecond has room to grow.
            _counter = secrets.randbits(10)
        else:
            _counter += 1
            if _counter > _COUNTER_MAX:
                # Counter exhausted: borrow the next millisecond rather than lose ordering.
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= secrets.randbits(62)
    return uuid.UUID(int=value)


def as_workflow_id(instance: Any) -> uuid.UUID:
    """The id of a workflow named the facade's ways: an instance (its ``id``), a UUID or its text.

    Anything else raises :class:`WorkflowDoesNotExist`.
    """
    value = getattr(instance, "id", instance)
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError) as exc:
        raise WorkflowDoesNotExist(f"{instance!r} is not a workflow id") from exc


__all__ = ["as_workflow_id", "new_id", "seeded_random"]
