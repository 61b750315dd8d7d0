"""Recovery: work left behind by a lost Celery message, a dead worker or a broker outage goes to a
worker again.

A node that a worker must run is SUBMITTED (a message is on its way) or EXECUTING (a worker
claimed it). Normally the message arrives, or Celery redelivers it (``acks_late``); but a broker
that lost its data, or a worker killed with its whole process group on Redis (the unacknowledged
message comes back only after the visibility timeout), can leave the node waiting for nothing.
The sweep here hands such nodes out again, each in its own transaction that locks the workflow:

- owed work first: a node whose message could not be sent after commit (the broker was down) is
  marked with ``redispatch_at`` (:func:`dispatch_owed`) and sent at the next sweep, whatever its
  lease says; likewise a ``stop`` hook recorded PENDING whose message was not sent;
- SUBMITTED for longer than ``LEASE_SECONDS``: the message is sent again (a history event
  ``redispatched``); if the first one arrives after all, the claim guard makes the second a no-op.
  A node re-sent this way is not sent again before ``LEASE_SECONDS * 2**(n-1)`` (``n`` re-sends,
  the exponent capped at 3), so a queue backlog longer than the lease is not multiplied;
- EXECUTING whose lease is stale: the worker running a hook refreshes ``updated_at`` every
  ``HEARTBEAT_SECONDS`` (engine/heartbeat.py), so only a node whose worker stopped beating for
  ``LEASE_SECONDS`` goes back to SUBMITTED (history event ``recovered``), its lease cleared, and
  is sent again; the next claim runs it with a new attempt number. A long task that is alive is
  never handed out twice.

Nodes that wait legitimately are left alone: those with a PENDING timer (a retry's backoff, a
trigger's time, an interval's next poll, a monitor), listeners waiting for their message, and
containers (processes and parallel groups).

The backoff assumes the earlier copies still wait in the queue. A broker that restarted empty (a
Redis without persistence) has lost them all: each sweep first asks the dispatcher whether that
happened (:func:`broker_loss_check`), and if so the backoff of every node, stop hook and listener
delivery still waiting for a message is dropped, so each is sent again once its lease has passed
rather than up to eight leases later.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from django.db import InterfaceError, OperationalError, transaction

from ..conf import dagger_settings
from ..models import (
    Delivery,
    DeliveryStatus,
    Node,
    NodeKind,
    NodeType,
    Status,
    StopHook,
    Timer,
    TimerStatus,
    Workflow,
)
from ..models.status import ACTIVE
from . import logs, ports
from .retry import resend_after
from .state import WorkflowState, flush_many, nodes_read_many

logger = logging.getLogger("dagger_django.engine")
S = Status


def _lease(lease_seconds: float | None) -> float:
    return float(dagger_settings.LEASE_SECONDS if lease_seconds is None else lease_seconds)


def dispatch_owed(*, targets: list[tuple[Any, Any]]) -> int:
    """Record that the messages of these ``(workflow id, node id)`` (SUBMITTED nodes, and PENDING
    stop hooks) did not go out: the next recovery sweep sends them. Called after commit when a
    dispatch failed; never raises (if the database is gone too, the lease still brings the work
    back). One short transaction per workflow, which locks it."""
    if not targets:
        return 0
    by_workflow: dict[Any, set[str]] = {}
    for workflow_id, node_id in targets:
        by_workflow.setdefault(workflow_id, set()).add(str(node_id))
    recorded = 0
    for workflow_id, node_ids in by_workflow.items():
        try:
            recorded += _owed_record(workflow_id, node_ids)
        except Exception:  # noqa: BLE001 - after commit: log, and leave it to the lease
            logger.exception(
                "could not record %d owed dispatch(es) of workflow %s", len(node_ids), workflow_id
            )
    return recorded


def _owed_record(workflow_id: Any, node_ids: set[str]) -> int:
    from .txn import lock

    with transaction.atomic():
        state = lock(workflow_id)
        if state is None:
            return 0
        now = ports.now()
        owed = [
            n
            for n in state.nodes.values()
            if str(n.id) in node_ids and (n.status == S.SUBMITTED or n.stop_hook == StopHook.PENDING)
        ]
        for node in owed:
            node.redispatch_at = now
            state.mark(node)
        if owed:
            state.flush()
        return len(owed)


def dispatch_owed_targets(targets: list[tuple[Any, Any]]) -> None:
    """:func:`dispatch_owed` for the ``(workflow id, node id)`` pairs of a batch that could not be
    sent (``ports.dispatch_in_batches``'s ``on_failure``)."""
    dispatch_owed(targets=targets)


def _candidates(column: str, *, before: dt.datetime, cap: int) -> dict[uuid.UUID, list[Node]]:
    """The nodes of up to ``cap`` workflows whose ``column`` (a recovery mark) is before
    ``before``, oldest first, read without a lock (the partial index of that column)."""
    ids = list(
        Workflow.objects.filter(**{f"{column}__lt": before})
        .order_by(column)
        .values_list("id", flat=True)[:cap]
    )
    found = nodes_read_many(ids)
    return {pk: found[pk] for pk in ids if pk in found}


def stranded_nodes(*, lease_seconds: float | None = None, limit: int | None = None) -> list[tuple[Any, Any]]:
    """``(node id, workflow id)`` of nodes that look stranded, owed ones first, then oldest first
    (no lock taken).

    The workflows are found by their recovery marks (``Workflow.resend_at`` and
    ``leased_since``, partial indexes), their nodes checked here; nodes with a PENDING timer are
    left out (one query for all candidates).
    """
    now = ports.now()
    cutoff = now - dt.timedelta(seconds=_lease(lease_seconds))
    cap = int(dagger_settings.MAX_TASKS_PER_TRIGGER if limit is None else limit)
    owed: list[tuple[dt.datetime, Any, Any]] = []
    for workflow_id, nodes in _candidates(
        "resend_at", before=now + dt.timedelta(microseconds=1), cap=cap
    ).items():
        owed.extend(
            (n.redispatch_at, n.id, workflow_id)
            for n in nodes
            if n.redispatch_at is not None
            and n.redispatch_at <= now
            and n.status == S.SUBMITTED
            and n.node_type == NodeType.LEAF
        )
    stale: list[tuple[dt.datetime, Any, Any]] = []
    for workflow_id, nodes in _candidates("leased_since", before=cutoff, cap=cap).items():
        stale.extend(
            (n.updated_at, n.id, workflow_id)
            for n in nodes
            if n.status in ACTIVE
            and n.updated_at < cutoff
            and n.node_type == NodeType.LEAF
            and n.redispatch_at is None
            and not (n.status == S.EXECUTING and n.kind == NodeKind.LISTENER)
        )
    owed.sort(key=lambda row: row[0])
    stale.sort(key=lambda row: row[0])
    rows = [(node_id, workflow_id) for _, node_id, workflow_id in owed[:cap]]
    rows += [(node_id, workflow_id) for _, node_id, workflow_id in stale[: max(0, cap - len(rows))]]
    if not rows:
        return []
    waiting_on_time = set(
        Timer.objects.filter(
            workflow_id__in={w for _, w in rows}, node_id__in=[n for n, _ in rows], status=TimerStatus.PENDING
        ).values_list("node_id", flat=True)
    )
    return [(node_id, workflow_id) for node_id, workflow_id in rows if node_id not in waiting_on_time]


def broker_loss_check() -> bool:
    """Whether the broker lost the messages it held (it restarted empty); if so,
    :func:`backoffs_forget`, then tell the dispatcher the loss is dealt with. Run first by every
    sweep that re-sends work (this one and the message sweep); two that notice at once both forget
    the backoffs, which is harmless.

    The dispatcher answers through ``messages_lost()`` and ``messages_marked()``
    (``CeleryDispatcher`` keeps a marker message on the broker, which goes with the rest); a
    dispatcher without them is never asked. When the broker cannot be asked, the backoffs stay and
    the next sweep asks again; when the database fails, the loss stays unmarked for the next sweep.
    """
    dispatcher = ports.get_dispatcher()
    lost = getattr(dispatcher, "messages_lost", None)
    marked = getattr(dispatcher, "messages_marked", None)
    if lost is None or marked is None:
        return False
    try:
        if not lost():
            return False
    except Exception as exc:  # noqa: BLE001 - the broker is down: ask again at the next sweep
        logger.info("could not ask the broker whether it lost its messages (%r)", exc)
        return False
    nodes, deliveries = backoffs_forget()
    logger.warning(
        "the broker lost the messages it held (it restarted empty, or is new): %d node(s) and stop"
        " hook(s) and %d listener delivery(ies) waiting with a re-send backoff go again after their lease",
        nodes,
        deliveries,
    )
    try:
        marked()
    except Exception as exc:  # noqa: BLE001 - unmarked, the next sweep forgets again: harmless
        logger.info("could not mark the broker (%r)", exc)
    return True


def ready_wake() -> bool:
    """Have the dispatcher announce nodes that wait for a worker unannounced (``ready_wake()``:
    ``CeleryDispatcher``'s ready list, whose message was lost); a dispatcher without it is never
    asked. Returns whether it announced any. When it cannot, the next sweep asks again."""
    wake = getattr(ports.get_dispatcher(), "ready_wake", None)
    if wake is None:
        return False
    try:
        return bool(wake())
    except Exception as exc:  # noqa: BLE001 - the broker is down: ask again at the next sweep
        logger.info("could not look at the ready list (%r)", exc)
        return False


def backoffs_forget() -> tuple[int, int]:
    """Drop the re-send backoff of the nodes, stop hooks and listener deliveries that wait for a
    message (``redispatch_at`` still ahead): the copies sent so far are gone with the broker's
    data, so each is handed out again once its lease has passed (a node's ``updated_at`` is its
    last send; a delivery is judged by when it was routed). Owed work (``redispatch_at`` already
    due) is sent at the next sweep anyway. Returns ``(nodes, deliveries)`` changed.
    """
    from .txn import lock_many

    now = ports.now()
    waiting_deliveries = Delivery.objects.filter(
        status=DeliveryStatus.PENDING, available_at__isnull=True, redispatch_at__gt=now
    )
    # Locked in id order, skipping rows a transition, a claim or a sweep holds (it is sending
    # or changing that one right now): this never waits on anyone, so it cannot deadlock.
    nodes = 0
    with transaction.atomic():
        ids = list(
            Workflow.objects.filter(resend_at__isnull=False)
            .order_by("pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)
        )
        states = []
        for _, (wf, loaded) in lock_many(ids).items():
            state = WorkflowState(wf, loaded)
            for node in loaded:
                if (
                    node.redispatch_at is not None
                    and node.redispatch_at > now
                    and (node.status == S.SUBMITTED or node.stop_hook == StopHook.PENDING)
                ):
                    node.redispatch_at = None
                    node.redispatches = 0
                    state.mark(node)
                    nodes += 1
            states.append(state)
        flush_many(states)
    with transaction.atomic():
        ids = list(
            waiting_deliveries.order_by("pk").select_for_update(skip_locked=True).values_list("pk", flat=True)
        )
        deliveries = Delivery.objects.filter(pk__in=ids).update(redispatch_at=None, redispatches=0)
    return nodes, deliveries


def nodes_recover(*, lease_seconds: float | None = None, limit: int | None = None) -> int:
    """One recovery sweep. Returns how many nodes were handed out again.

    At most ``limit`` (default ``MAX_TASKS_PER_TRIGGER``) nodes; each is re-checked under its
    workflow's lock, so two sweeps running at once recover a node once.
    """
    lease = _lease(lease_seconds)
    recovered = 0
    broker_loss_check()
    ready_wake()
    hooks = stop_hooks_recover(lease_seconds=lease, limit=limit)
    for node_id, workflow_id in stranded_nodes(lease_seconds=lease, limit=limit):
        try:
            if node_recover(workflow_id=workflow_id, node_id=node_id, lease_seconds=lease):
                recovered += 1
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            key = logs.key_of(workflow_id)
            logger.exception(
                "recovering node %s of workflow %s (business key %r) failed",
                node_id,
                workflow_id,
                key,
                extra=logs.extra(workflow_id, key, str(node_id)),
            )
    if recovered or hooks:
        logger.info("recovery: %d node(s) and %d stop hook(s) handed out again", recovered, hooks)
    return recovered + hooks


def stop_hooks_recover(*, lease_seconds: float | None = None, limit: int | None = None) -> int:
    """Send again the PENDING ``stop`` hooks that are owed (their message failed) or whose message
    is older than the lease (lost, or its worker died in the hook). Returns how many were sent.

    Each workflow's hooks are taken under its lock (two sweeps send a hook once) and get the
    same backoff as a re-sent node. One message per workflow.
    """
    lease = _lease(lease_seconds)
    now = ports.now()
    cutoff = now - dt.timedelta(seconds=lease)
    cap = int(dagger_settings.MAX_TASKS_PER_TRIGGER if limit is None else limit)
    by_workflow: dict[Any, list[Any]] = {}
    candidates = set(_candidates("stop_hooks_since", before=cutoff, cap=cap))
    candidates |= set(_candidates("resend_at", before=now + dt.timedelta(microseconds=1), cap=cap))
    for workflow_id in sorted(candidates, key=str):
        taken = _stop_hooks_take(workflow_id, now=now, cutoff=cutoff, lease=lease)
        if taken:
            by_workflow[workflow_id] = taken
    sent = 0
    dispatcher = ports.get_dispatcher()
    for workflow_id, node_ids in by_workflow.items():
        try:
            dispatcher.run_stop_hooks(workflow_id=workflow_id, node_ids=node_ids)
            sent += len(node_ids)
        except Exception as exc:  # noqa: BLE001 - still owed: the next sweep tries again
            logger.error("could not send stop hooks of workflow %s (%r)", workflow_id, exc)
            dispatch_owed(targets=[(workflow_id, node_id) for node_id in node_ids])
    return sent


def _stop_hooks_take(workflow_id: Any, *, now: dt.datetime, cutoff: dt.datetime, lease: float) -> list[Any]:
    """Under the workflow's lock: the PENDING stop hooks of a workflow that are owed or older than
    the lease, each given the backoff of a re-sent node (two sweeps send it once)."""
    from .txn import lock

    with transaction.atomic():
        state = lock(workflow_id)
        if state is None:
            return []
        taken = []
        for node in sorted(state.nodes.values(), key=lambda n: n.position):
            if node.stop_hook != StopHook.PENDING:
                continue
            if node.redispatch_at is None and node.updated_at >= cutoff:
                continue
            if node.redispatch_at is not None and node.redispatch_at > now:
                continue
            node.redispatches += 1
            node.redispatch_at = now + resend_after(node.redispatches, lease)
            state.mark(node)
            taken.append(node.id)
        if taken:
            state.flush()
        return taken


def node_recover(*, workflow_id: Any, node_id: Any, lease_seconds: float | None = None) -> bool:
    """Hand one stranded node out again, if it still is stranded once its workflow is locked."""
    from .txn import commit, lock

    lease = _lease(lease_seconds)
    with transaction.atomic():
        state = lock(workflow_id)
        if state is None:
            return False
        wf = state.workflow
        node = state.get(node_id if isinstance(node_id, uuid.UUID) else uuid.UUID(str(node_id)))
        if node is None or not _looks_stranded(node, state.now, lease):
            return False
        if Timer.objects.filter(workflow_id=wf.id, node_id=node.id, status=TimerStatus.PENDING).exists():
            return False
        detail: dict[str, Any] = {"idle_since": node.updated_at.isoformat(), "lease_seconds": lease}
        if node.redispatch_at is not None:
            detail["owed_since"] = node.redispatch_at.isoformat()
        if node.status == S.EXECUTING:
            detail["previous_lease"] = node.lease
            node.lease = ""
            state.set_status(node, S.SUBMITTED, reason="recovered", detail=detail)
        else:
            state.touch(node)  # restarts its lease: the next sweep leaves it alone for a while
            state.record(reason="redispatched", detail=detail, node=node)
        # Not sent again before the backoff has passed, unless this send fails (then it is owed).
        node.redispatches += 1
        node.redispatch_at = state.now + resend_after(node.redispatches, lease)
        state.touch(node)
        state.to_dispatch.append(node.id)
        commit(state)
        return True


def _looks_stranded(node: Node, now: dt.datetime, lease: float) -> bool:
    if node.node_type != NodeType.LEAF:
        return False
    if node.status == S.SUBMITTED and node.redispatch_at is not None:
        return node.redispatch_at <= now  # owed, or its backoff is over
    if node.updated_at >= now - dt.timedelta(seconds=lease):
        return False
    if node.status == S.SUBMITTED:
        return True
    return node.status == S.EXECUTING and node.kind != NodeKind.LISTENER


__all__ = [
    "backoffs_forget",
    "broker_loss_check",
    "dispatch_owed",
    "dispatch_owed_targets",
    "node_recover",
    "nodes_recover",
    "stop_hooks_recover",
    "stranded_nodes",
]
