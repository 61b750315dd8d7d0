"""Helpers for testing code that uses dagger_django, in this project and in users' projects.

``FrozenClock`` moves the engine's time without sleeping; ``InMemoryDispatcher`` runs the
engine's work in-process. Both plug into the engine's ports::

    from dagger_django.testing import engine_under_test

    with engine_under_test() as (dispatcher, clock):
        wf = template.create_instance(submit_task=True, order_id="o1")
        dispatcher.drain()
        clock.advance(seconds=60)
        dispatcher.drain()            # timers now due fire
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

from django.utils import timezone

from .adapters.memory import InMemoryDispatcher
from .engine import ports


class FrozenClock(ports.Clock):
    def __init__(self, start: dt.datetime | None = None) -> None:
        self.current = start or timezone.now()

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, *, seconds: float = 0.0) -> dt.datetime:
        self.current = self.current + dt.timedelta(seconds=seconds)
        return self.current


@contextmanager
def engine_under_test(
    *, clock: FrozenClock | None = None
) -> Iterator[tuple[InMemoryDispatcher, FrozenClock]]:
    """Swap in an in-memory dispatcher and a frozen clock for the duration of the block."""
    dispatcher = InMemoryDispatcher()
    clock = clock or FrozenClock()
    previous_dispatcher = ports.set_dispatcher(dispatcher)
    previous_clock = ports.set_clock(clock)
    try:
        yield dispatcher, clock
    finally:
        ports.set_dispatcher(previous_dispatcher)
        ports.set_clock(previous_clock)


__all__ = ["FrozenClock", "InMemoryDispatcher", "engine_under_test"]
