"""A worker gathers the ``run_node`` messages it has prefetched into ``run_nodes`` batches.

Work arrives one message per workflow (each client's submit sends its own ``run_node``), while
the engine pays for durability per transaction: a batch of K workflows commits K times less often
(``services.nodes_run``). This is the task strategy of ``dagger_django.run_node``: the worker's
consumer hands it each message as it arrives. While a pool process is free the message runs at
once, as usual. When every process has a task (a backlog), it is kept for up to
``COALESCE_SECONDS``, with those that follow; then, when it holds messages of at least two workflows, it
publishes them as ``run_nodes`` messages of up to ``DISPATCH_BATCH`` nodes and acknowledges the
originals. A message held alone goes to the pool as usual, so an idle system pays the window and
nothing else. Held messages do not count against the prefetch limit (as Celery does for tasks
waiting for their ETA), so the consumer goes on fetching while a batch forms.

Nothing is lost on the way: the originals are acknowledged only after the batch was published, so
a crash in between leaves both, and the engine runs a node once however often it is asked (a
second message finds it taken). If publishing fails, every held message is run as usual. Only
plain messages are gathered: one with an ETA or that is a retry (``LeaseHeld`` keeps its task id
as the node's lease) goes straight through. The strategy applies only where the consumer runs an
event loop (prefork, on Redis or AMQP), where its timer calls back on the consumer's own thread;
elsewhere (the embedded file broker, solo and thread pools) messages run one by one as before.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from ..conf import dagger_settings

logger = logging.getLogger("dagger_django.worker")


@dataclass
class _Held:
    handler_args: tuple[Any, ...]
    handler_kwargs: dict[str, Any]
    ack: Any
    workflow_id: uuid.UUID
    node_id: uuid.UUID


def _target(message: Any) -> tuple[uuid.UUID, uuid.UUID] | None:
    """``(workflow id, node id)`` of a plain ``run_node`` message; None for anything else."""
    headers = message.headers or {}
    if headers.get("eta") or headers.get("retries") or headers.get("countdown"):
        return None
    try:
        args, kwargs, _embed = message.decode()
        if kwargs:
            return None
        workflow_id, node_id = args
        return uuid.UUID(str(workflow_id)), uuid.UUID(str(node_id))
    except Exception:  # noqa: BLE001 - not ours to judge: the normal path reports it
        return None


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery task strategy (``Task.Strategy``) of ``run_node``; see the module's docstring."""
    from celery.worker.strategy import default

    run_now = default(task, app, consumer, **kwargs)
    window = float(dagger_settings.COALESCE_SECONDS)
    size = int(dagger_settings.DISPATCH_BATCH)
    if window <= 0 or size <= 1 or getattr(consumer, "hub", None) is None:
        return run_now
    held: list[_Held] = []
    flush_entry: list[Any] = [None]
    errors = consumer.connection_errors
    from celery.worker import state as worker_state

    def pool_full() -> bool:
        """Whether every pool process has a task (running or handed to it and waiting): only
        then is a message held. With a process free it runs at once, alone: batches only form
        from a backlog, where they cost no latency, and slow hooks keep running side by side."""
        try:
            processes = int(consumer.pool.num_processes)
        except Exception:  # noqa: BLE001 - a pool that cannot say: never hold
            return False
        return len(worker_state.reserved_requests) >= processes

    def flush() -> None:
        flush_entry[0] = None
        batch = list(held)
        held.clear()
        if batch:
            consumer.qos.decrement_eventually(len(batch))
        first: dict[uuid.UUID, _Held] = {}
        rest: list[_Held] = []
        for item in batch:
            # One node per workflow in a batch: a parallel group's branches still run side by side.
            if item.workflow_id in first:
                rest.append(item)
            else:
                first[item.workflow_id] = item
        gathered = list(first.values())
        if len(gathered) > 1:
            try:
                from .celery import CeleryDispatcher

                CeleryDispatcher().run_nodes(targets=[(h.workflow_id, h.node_id) for h in gathered])
            except Exception as exc:  # noqa: BLE001 - run them one by one instead
                logger.warning(
                    "could not publish a batch of %d nodes (%r); running them one by one", len(gathered), exc
                )
                rest = batch
            else:
                for item in gathered:
                    item.ack(logger, errors)
        else:
            rest = batch
        for item in rest:
            try:
                run_now(*item.handler_args, **item.handler_kwargs)
            except Exception:  # noqa: BLE001 - the others still run; the broker keeps this one
                logger.exception("could not hand a held run_node message to the pool")

    def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        target = _target(message)
        if target is None or (not held and not pool_full()):
            return run_now(message, body, ack, reject, callbacks, **kw)
        held.append(_Held((message, body, ack, reject, callbacks), kw, ack, target[0], target[1]))
        # A held message does not take a prefetch slot (as Celery does for a task with an ETA):
        # the consumer goes on fetching while the batch forms.
        consumer.qos.increment_eventually()
        if len(held) >= size:
            if flush_entry[0] is not None:
                flush_entry[0].cancel()
            flush()
        elif flush_entry[0] is None:
            flush_entry[0] = consumer.timer.call_after(window, flush)
        return None

    return handler
