"""The ports the engine drives. Celery implements them in production, in-memory fakes in tests."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from django.utils import timezone

logger = logging.getLogger("dagger_django.engine")


class Dispatcher(Protocol):
    """Sends work to workers. Called only from ``transaction.on_commit`` callbacks.

    A method raises when its message could not be sent (after its own brief, bounded retries):
    the engine then records the work as owed and the recovery sweep sends it later.

    A dispatcher may also offer ``messages_lost() -> bool``, whether the broker lost the messages it
    held (it restarted empty) since ``messages_marked()`` was last called, and ``messages_marked()``;
    both raise when the broker cannot be reached. The sweeps ask first, and mark once they have
    dealt with a loss (``recovery.broker_loss_check``); a dispatcher without them is never asked.
    """

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
    batching = _batching.get()
    if batching is not None:
        return batching  # type: ignore[return-value]
    if _dispatcher is None:
        from django.utils.module_loading import import_string

        from ..conf import dagger_settings

        _dispatcher = import_string(dagger_settings.DISPATCHER)()
    return _dispatcher


class _BatchingDispatcher:
    """Collects ``run_node`` calls and sends them as ``run_nodes`` batches; the rest passes on.

    A batch holds one node per workflow: a second node of a workflow already waiting (the branches
    of a parallel group) goes in a message of its own, so the branches still run side by side.
    """

    def __init__(self, target: Any, size: int, on_failure: Callable[[list[Any]], None] | None = None) -> None:
        self.target = target
        self.size = size
        self.on_failure = on_failure
        self.pending: list[tuple[uuid.UUID, uuid.UUID]] = []
        self.workflows: set[Any] = set()

    def run_node(self, *, workflow_id: uuid.UUID, node_id: uuid.UUID) -> None:
        if workflow_id in self.workflows:
            self.target.run_node(workflow_id=workflow_id, node_id=node_id)
            return
        self.pending.append((workflow_id, node_id))
        self.workflows.add(workflow_id)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        self.workflows = set()
        try:
            if len(pending) == 1:
                self.target.run_node(workflow_id=pending[0][0], node_id=pending[0][1])
            elif pending:
                self.target.run_nodes(targets=pending)
        except Exception:
            if self.on_failure is None:
                raise
            # The transitions are committed: the caller records these nodes as owed.
            logger.exception("could not dispatch a batch of %d node(s)", len(pending))
            self.on_failure(pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


_batching: ContextVar[_BatchingDispatcher | None] = ContextVar("dagger_batching", default=None)


@contextmanager
def dispatch_in_batches(*, on_failure: Callable[[list[Any]], None] | None = None) -> Iterator[None]:
    """Inside the block, nodes handed to workers after each commit are sent ``DISPATCH_BATCH``
    at a time (and the rest when the block ends), for loops of many small transactions over
    different workflows, such as a timer sweep. A crash before a batch is sent loses no work:
    the nodes are committed as SUBMITTED and the recovery sweep sends them. A batch that cannot be
    sent is handed to ``on_failure`` (the ``(workflow id, node id)`` pairs) instead of raising."""
    from ..conf import dagger_settings

    target = get_dispatcher()
    size = int(dagger_settings.DISPATCH_BATCH)
    if size <= 1 or not hasattr(target, "run_nodes") or isinstance(target, _BatchingDispatcher):
        yield
        return
    batching = _BatchingDispatcher(target, size, on_failure)
    token = _batching.set(batching)
    try:
        yield
    finally:
        _batching.reset(token)
        batching.flush()


def dispatch_batched_flush() -> None:
    """Send now what the enclosing :func:`dispatch_in_batches` block holds (a partial batch),
    before the block goes on to something slow (a timer sweep running hooks): what was committed
    for workers does not wait for the block's end. Outside such a block, nothing to do."""
    batching = _batching.get()
    if batching is not None:
        batching.flush()


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


# -- observers: who is told of each committed transition ------------------------------------------
#: A callable given a committed :class:`~dagger_django.engine.state.WorkflowState` (its
#: ``changes``, ``workflow`` and ``nodes``), after the transaction committed. Metrics and tracing
#: (``dagger_django.observability``) register theirs when the app starts; none are registered when
#: their packages are not installed, and then a commit pays one loop over an empty tuple.
CommitObserver = Callable[[Any], None]

_observers: tuple[CommitObserver, ...] = ()


def observers() -> tuple[CommitObserver, ...]:
    """The registered commit observers (called by ``txn`` after each commit, in order)."""
    return _observers


def observer_add(observer: CommitObserver) -> Callable[[], None]:
    """Register ``observer`` (once: adding it again changes nothing); returns its remover."""
    global _observers
    if observer not in _observers:
        _observers = (*_observers, observer)

    def remove() -> None:
        global _observers
        _observers = tuple(o for o in _observers if o is not observer)

    return remove


# -- headers of outgoing messages: the context a Kafka message carries ------------------------------
#: A callable giving headers (``{name: text}``) to add to each message a workflow sends, asked
#: when the message is written to the outbox (in the code that sent it). Tracing registers one
#: (the W3C ``traceparent``), so a message sent later by another process still carries the trace
#: of the task that sent it.
HeaderSource = Callable[[], Any]

_header_sources: tuple[HeaderSource, ...] = ()


def header_source_add(source: HeaderSource) -> Callable[[], None]:
    """Register ``source`` (once); returns its remover."""
    global _header_sources
    if source not in _header_sources:
        _header_sources = (*_header_sources, source)

    def remove() -> None:
        global _header_sources
        _header_sources = tuple(s for s in _header_sources if s is not source)

    return remove


def outgoing_headers() -> dict[str, str]:
    """The headers the registered sources add to a message sent now ({} when none are)."""
    headers: dict[str, str] = {}
    for source in _header_sources:
        headers.update(source() or {})
    return headers
