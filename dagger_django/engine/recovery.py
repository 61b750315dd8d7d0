"""Recovery: work left behind by a lost Celery message or a dead worker goes to a worker again.

A node that a worker must run is SUBMITTED (a message is on its way) or EXECUTING (a worker
claimed it). Normally the message arrives, or Celery redelivers it (``acks_late``); but a broker
that lost its data, or a worker killed with its whole process group on Redis (the unacknowledged
message comes back only after the visibility timeout, an hour by default), can leave the node
waiting for nothing. The sweep here finds such nodes by their ``updated_at`` (a node's lease is
``LEASE_SECONDS`` from its last change) and hands them out again, each in its own transaction
that locks the workflow:

- SUBMITTED: the message is sent again (a history event ``redispatched``); if the first one
  arrives after all, the claim guard makes the second a no-op;
- EXECUTING: the node goes back to SUBMITTED (history event ``recovered``), its lease is cleared,
  and it is sent again; the next claim runs it with a new attempt number. If the first worker was
  merely slow, not dead, its late result is discarded (the attempt no longer matches).

Nodes that wait legitimately are left alone: those with a PENDING timer (a retry's backoff, a
trigger's time, an interval's next poll, a monitor), listeners waiting for their message, and
containers (processes and parallel groups). A task that runs longer than the lease is handed out
again while it runs: keep ``LEASE_SECONDS`` above your longest task.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Exists, OuterRef

from ..conf import dagger_settings
from ..models import Node, NodeKind, NodeType, Status, Timer, TimerStatus
from . import ports
from .state import WorkflowState, load_locked

logger = logging.getLogger("dagger_django.engine")
S = Status


def _lease(lease_seconds: float | None) -> float:
    return float(dagger_settings.LEASE_SECONDS if lease_seconds is None else lease_seconds)


def stranded_nodes(*, lease_seconds: float | None = None, limit: int | None = None) -> list[tuple[Any, Any]]:
    """``(node id, workflow id)`` of nodes that look stranded, oldest first (no lock taken).

    Uses the partial index on ``Node(status, updated_at)`` (SUBMITTED/EXECUTING rows only).
    """
    cutoff = ports.now() - dt.timedelta(seconds=_lease(lease_seconds))
    cap = int(dagger_settings.MAX_TASKS_PER_TRIGGER if limit is None else limit)
    waiting_on_time = Timer.objects.filter(
        workflow_id=OuterRef("workflow_id"), node_id=OuterRef("id"), status=TimerStatus.PENDING
    )
    rows = (
        Node.objects.filter(status__in=[S.SUBMITTED, S.EXECUTING], updated_at__lt=cutoff)
        .filter(node_type=NodeType.LEAF)
        .exclude(status=S.EXECUTING, kind=NodeKind.LISTENER)
        .exclude(Exists(waiting_on_time))
        .order_by("updated_at")
        .values_list("id", "workflow_id")[:cap]
    )
    return list(rows)


def nodes_recover(*, lease_seconds: float | None = None, limit: int | None = None) -> int:
    """One recovery sweep. Returns how many nodes were handed out again.

    At most ``limit`` (default ``MAX_TASKS_PER_TRIGGER``) nodes; each is re-checked under its
    workflow's lock, so two sweeps running at once recover a node once.
    """
    lease = _lease(lease_seconds)
    recovered = 0
    for node_id, workflow_id in stranded_nodes(lease_seconds=lease, limit=limit):
        try:
            if node_recover(workflow_id=workflow_id, node_id=node_id, lease_seconds=lease):
                recovered += 1
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            logger.exception("recovering node %s of workflow %s failed", node_id, workflow_id)
    if recovered:
        logger.info("recovery: %d node(s) handed out again", recovered)
    return recovered


def node_recover(*, workflow_id: Any, node_id: Any, lease_seconds: float | None = None) -> bool:
    """Hand one stranded node out again, if it still is stranded once its workflow is locked."""
    from .services import _commit

    cutoff = ports.now() - dt.timedelta(seconds=_lease(lease_seconds))
    with transaction.atomic():
        wf, nodes = load_locked(workflow_id)
        if wf is None:
            return False
        state = WorkflowState(wf, nodes)
        node = state.get(node_id if isinstance(node_id, uuid.UUID) else uuid.UUID(str(node_id)))
        if node is None or not _looks_stranded(node, cutoff):
            return False
        if Timer.objects.filter(workflow_id=wf.id, node_id=node.id, status=TimerStatus.PENDING).exists():
            return False
        detail = {"idle_since": node.updated_at.isoformat(), "lease_seconds": _lease(lease_seconds)}
        if node.status == S.EXECUTING:
            detail["previous_lease"] = node.lease
            node.lease = ""
            state.set_status(node, S.SUBMITTED, reason="recovered", detail=detail)
        else:
            state.touch(node)  # restarts its lease: the next sweep leaves it alone for a while
            state.record(reason="redispatched", detail=detail, node=node)
        state.to_dispatch.append(node.id)
        _commit(state)
        return True


def _looks_stranded(node: Node, cutoff: dt.datetime) -> bool:
    if node.node_type != NodeType.LEAF or node.updated_at >= cutoff:
        return False
    if node.status == S.SUBMITTED:
        return True
    return node.status == S.EXECUTING and node.kind != NodeKind.LISTENER


__all__ = ["node_recover", "nodes_recover", "stranded_nodes"]
