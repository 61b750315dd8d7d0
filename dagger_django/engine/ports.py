"""The ports the engine drives. Celery implements them in production, in-memory fakes in tests."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Protocol

from django.utils import timezone


class Dispatcher(Protocol):
    """Sends work to workers. Called only from ``transaction.on_commit`` callbacks."""

    def run_node(self, *, workflow_id: uuid.UUID, node_id: uuid.UUID) -> None: ...

    def run_nodes(self, *, targets: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """Run many ``(workflow id, node id)``; a dispatcher may send them in fewer messages."""
        ...

    def fire_timer(self, *, timer_id: int, eta: dt.datetime) -> None: ...

    def sweep_timers(self, *, eta: dt.datetime, count: int = 1) -> None:
        """Run ``count`` timer sweeps at ``eta`` (docs/time.md: precision for bursts of timers)."""
        ...

    def run_stop_hooks(self, *, workflow_id: uuid.UUID, node_ids: list[uuid.UUID]) -> None: ...


class Clock:
    """Wall clock of the engine. Tests swap it (see ``dagger_django.testing.FrozenClock``)."""

    def now(self) -> dt.datetime:
        return timezone.now()


_clock: Clock = Clock()


def get_clock() -> Clock:
    return _clock


def set_clock(clock: Clock) -> Clock:
    """Install ``clock`` and return the previous one."""
    global _clock
    previous, _clock = _clock, clock
    return previous


def now() -> dt.datetime:
    return _clock.now()


_dispatcher: Dispatcher | None = None


def get_dispatcher() -> Dispatcher:
    global _dispatcher
    if _dispatcher is None:
        from django.utils.module_loading import import_string

        from ..conf import dagger_settings

        _dispatcher = import_string(dagger_settings.DISPATCHER)()
    return _dispatcher


def dispatch_nodes(targets: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """Hand nodes to workers: in batches when the dispatcher can (``run_nodes``), else one by one."""
    if not targets:
        return
    dispatcher = get_dispatcher()
    if len(targets) > 1 and hasattr(dispatcher, "run_nodes"):
        dispatcher.run_nodes(targets=targets)
        return
    for workflow_id, node_id in targets:
        dispatcher.run_node(workflow_id=workflow_id, node_id=node_id)


def set_dispatcher(dispatcher: Dispatcher | None) -> Dispatcher | None:
    """Install ``dispatcher`` (None = the configured one, built on next use); return the previous."""
    global _dispatcher
    previous, _dispatcher = _dispatcher, dispatcher
    return previous
