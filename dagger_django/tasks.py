"""dagger's Celery tasks: ids in, one engine call, the retry/ack policy out.

The per-node tasks are ``acks_late`` with ``reject_on_worker_lost``: a worker that dies mid-task
leaves the message to be delivered again, and the engine's guards make the second delivery safe.
The sweeps started by celery-beat are not: a lost sweep is the next sweep's work.
Database outages are retried with backoff instead of losing the message. A task whose follow-up
dispatch fails still succeeds: the engine records the work as owed and recovery sends it. A
redelivered message that finds its node still running (the lease's heartbeat is fresh) runs
nothing and comes back later, when a dead worker's lease would be stale.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import shared_task
from celery.signals import (
    before_task_publish,
    task_failure,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_ready,
)
from django.db import InterfaceError, OperationalError, connections

from .conf import dagger_settings
from .engine import logs, recovery, services, timers
from .observability import tracing

logger = logging.getLogger("dagger_django.tasks")

_COMMON: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": None,
}


# Its strategy gathers prefetched messages into run_nodes batches (adapters/coalesce.py).
@shared_task(
    name="dagger_django.run_node", bind=True, Strategy="dagger_django.adapters.coalesce:strategy", **_COMMON
)
def run_node(self: Any, workflow_id: str, node_id: str) -> int:
    try:
        return services.node_run(workflow_id=workflow_id, node_id=node_id, lease=self.request.id or "")
    except services.LeaseHeld as held:
        # The same task id (= lease) comes back: a retry keeps it.
        raise self.retry(countdown=held.retry_in, max_retries=None) from None


@shared_task(name="dagger_django.run_nodes", bind=True, **_COMMON)
def run_nodes(self: Any, targets: list[list[str]]) -> int:
    """Run many ``[workflow id, node id]`` as one batch (``services.nodes_run``).

    The batch's transitions share transactions (a savepoint per workflow); each node gets a
    lease of its own (this message's id and its position), so a redelivered batch re-runs
    exactly what this one had claimed and not finished. A failure of one node is logged and
    leaves it to the recovery sweeps; the others still run. A database outage retries the whole
    batch (the nodes already done are no-ops then).
    """
    return _run_batch(self, [(w, n) for w, n in targets])


@shared_task(name="dagger_django.run_ready", bind=True, **_COMMON)
def run_ready(self: Any) -> int:
    """Run a batch of the ready list (``adapters/ready.py``), as ``run_nodes`` runs its targets.

    The batch is taken into a list named after this task's id, so a redelivered or retried task
    (the same id) runs the same batch under the same leases; it is forgotten once run, or when the
    task fails for good (its nodes are then the recovery sweep's, as a failed ``run_nodes``'s are).
    """
    from celery.exceptions import Retry

    from .adapters import ready

    lease = self.request.id or ""
    targets = ready.take(lease)
    if not targets:
        ready.done(lease)
        return 0
    try:
        steps = _run_batch(self, targets)
    except (OperationalError, InterfaceError, Retry):
        raise  # the same task comes back for the same batch
    except BaseException:
        ready.done(lease)
        raise
    ready.done(lease)
    return steps


def _run_batch(task: Any, targets: list[tuple[Any, Any]]) -> int:
    """The body of ``run_nodes`` and ``run_ready``: run ``targets`` under this message's leases."""
    lease = task.request.id or ""
    if len(targets) == 1:
        workflow_id, node_id = targets[0]
        try:
            return services.node_run(workflow_id=workflow_id, node_id=node_id, lease=f"{lease}:0")
        except services.LeaseHeld as held:
            raise task.retry(countdown=held.retry_in, max_retries=None) from None
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            key = logs.key_of(workflow_id)
            logger.exception(
                "running node %s of workflow %s (business key %r) failed",
                node_id,
                workflow_id,
                key,
                extra=logs.extra(workflow_id, key, node_id),
            )
            return 0
    done = services.nodes_run(targets=targets, lease=lease)
    if done.retry_in:
        # Some node of this batch still runs under its lease: come back once it would be stale
        # (the nodes done by then are no-ops).
        raise task.retry(countdown=done.retry_in, max_retries=None)
    return done.steps


@shared_task(name="dagger_django.fire_timer", **_COMMON)
def fire_timer(timer_id: int) -> bool:
    return timers.timer_fire(timer_id=timer_id)


@shared_task(name="dagger_django.run_stop_hooks", **_COMMON)
def run_stop_hooks(workflow_id: str, node_ids: list[str]) -> int:
    return services.stop_hooks_run(workflow_id=workflow_id, node_ids=node_ids)


# -- time: the beat entries' tasks and recovery at worker start (docs/time.md) ------------------------
# Not acks_late: a sweep that is lost or fails is simply the next sweep's work.
@shared_task(name="dagger_django.sweep_timers", ignore_result=True)
def sweep_timers(upcoming: bool = True) -> int:
    """Fire the due timers; then (the beat's sweep) schedule sweeps for those due before the next."""
    fired = timers.timers_fire_due()
    if upcoming:
        timers.timers_dispatch_upcoming()
    return fired


@shared_task(name="dagger_django.recover_nodes", ignore_result=True)
def recover_nodes() -> int:
    return recovery.nodes_recover()


@task_postrun.connect(dispatch_uid="dagger_django.close_old_connections")
def _close_old_connections(sender: Any = None, task: Any = None, **kwargs: Any) -> None:
    """After each task a worker runs, close a database connection that failed or outlived
    ``CONN_MAX_AGE``, as Django does after each request; a healthy one is kept for the next task.
    (Celery's own fixup closes every connection after each task unless ``CELERY_DB_REUSE_MAX`` is
    set: see docs/configuration.md, "Database connections in workers".) Not for a task applied
    eagerly (``CELERY_TASK_ALWAYS_EAGER``, ``.apply()``): it ran in its caller's connection, maybe
    inside the caller's transaction, which must stay open."""
    request = getattr(task or sender, "request", None)
    if getattr(request, "is_eager", False):
        return
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


@worker_init.connect(dispatch_uid="dagger_django.gc_freeze_main")
@worker_process_init.connect(dispatch_uid="dagger_django.gc_freeze_pool")
def _gc_freeze(**kwargs: Any) -> None:
    """``WORKER_GC_FREEZE``: once a worker process has started (the main process, and each pool
    process after the fork), what it has loaded so far (modules, settings, the app's classes and
    templates) is moved out of the garbage collector's sight (``gc.freeze``). It is never garbage,
    and the collector's full passes went through all of it again and again: a quarter of a pool
    process's CPU per delivery (docs/benchmarks.md, "Engine v2, fourth slice")."""
    if dagger_settings.WORKER_GC_FREEZE:
        gc.collect()
        gc.freeze()


@worker_ready.connect(dispatch_uid="dagger_django.recover_on_boot")
def _recover_on_boot(sender: Any = None, **kwargs: Any) -> None:
    """``RESTART_TASKS_ON_BOOT``: a starting worker asks for one recovery sweep."""
    if dagger_settings.RESTART_TASKS_ON_BOOT:
        queue = dagger_settings.CELERY_QUEUE
        recover_nodes.apply_async(**({"queue": queue} if queue else {}))


# -- traces (docs/observability.md): a span per dagger task, its context in the message headers ------
#: dagger's tasks, by name: ``(index of the workflow id, index of the node id)`` in their arguments.
TRACED: dict[str, tuple[int | None, int | None]] = {
    "dagger_django.run_node": (0, 1),
    "dagger_django.run_nodes": (None, None),
    "dagger_django.run_ready": (None, None),
    "dagger_django.fire_timer": (None, None),
    "dagger_django.run_stop_hooks": (0, None),
    "dagger_django.sweep_timers": (None, None),
    "dagger_django.recover_nodes": (None, None),
}


@before_task_publish.connect(dispatch_uid="dagger_django.trace_publish")
def _trace_publish(sender: Any = None, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """The publisher's trace context goes in a dagger task message's headers."""
    if headers is not None and sender in TRACED and tracing.enabled():
        tracing.inject(headers)


@task_prerun.connect(dispatch_uid="dagger_django.trace_start")
def _trace_start(sender: Any = None, task: Any = None, args: Any = None, **kwargs: Any) -> None:
    if task is None or task.name not in TRACED or not tracing.enabled():
        return
    workflow_at, node_at = TRACED[task.name]
    args = list(args or ())
    task.request.dagger_span = tracing.task_start(
        task.name,
        task.request,
        workflow_id=args[workflow_at] if workflow_at is not None and len(args) > workflow_at else None,
        node_id=args[node_at] if node_at is not None and len(args) > node_at else None,
        batch=task.name in ("dagger_django.run_nodes", "dagger_django.run_ready"),
    )


@task_failure.connect(dispatch_uid="dagger_django.trace_failure")
def _trace_failure(sender: Any = None, exception: BaseException | None = None, **kwargs: Any) -> None:
    if sender is not None and getattr(sender.request, "dagger_span", None) is not None:
        sender.request.dagger_span_error = exception


@task_postrun.connect(dispatch_uid="dagger_django.trace_end")
def _trace_end(sender: Any = None, task: Any = None, **kwargs: Any) -> None:
    started = getattr(getattr(task, "request", None), "dagger_span", None)
    if started is not None:
        task.request.dagger_span = None
        tracing.task_end(started, getattr(task.request, "dagger_span_error", None))


__all__ = [
    "run_node",
    "run_nodes",
    "run_ready",
    "fire_timer",
    "run_stop_hooks",
    "sweep_timers",
    "recover_nodes",
]
