"""Every vocabulary the package stores (statuses, kinds, types), in one place, with the
transitions allowed between statuses.

* :class:`Status`: workflows and nodes. Their transitions are checked in memory by the engine's
  ``WorkflowState`` (``engine/state.py``: ``NODE_TRANSITIONS``, ``WORKFLOW_TRANSITIONS``).
* :class:`DeliveryStatus`, :class:`InboxStatus`, :class:`TimerStatus`, :class:`OutboxStatus`: rows
  written by one ``UPDATE`` each, never loaded first. Their tables below (``from -> {to}``) are
  enforced by :func:`transition`, which every writer of these statuses goes through: it puts the
  statuses a row may come from in the ``UPDATE``'s ``WHERE``, so an illegal transition changes no
  row and costs no extra query (``tests/engine/test_transitions.py`` fails on a writer that
  bypasses it). See docs/internals.md, "Statuses and their transitions".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.db import models

if TYPE_CHECKING:
    from django.db.models import QuerySet


class Status(models.TextChoices):
    """Status of a workflow or a node; the names and values of the original ``TaskStatusEnum``."""

    NOT_STARTED = "NOT_STARTED", "Not started"
    SUBMITTED = "SUBMITTED", "Submitted"
    EXECUTING = "EXECUTING", "Executing"
    COMPLETED = "COMPLETED", "Completed"
    FAILURE = "FAILURE", "Failure"
    SKIPPED = "SKIPPED", "Skipped"
    STOPPED = "STOPPED", "Stopped"


#: Statuses a workflow or node never leaves on its own (``definitions.enums.TERMINAL_STATUSES``
#: is the same set for task objects, which cannot import the models: a test keeps them equal).
TERMINAL = frozenset({Status.COMPLETED, Status.FAILURE, Status.SKIPPED, Status.STOPPED})
#: Statuses of work handed to a worker: a message is on its way, or a worker holds it.
ACTIVE = frozenset({Status.SUBMITTED, Status.EXECUTING})
#: Terminal with no way back: FAILURE excepted (a failed workflow is retried from its failed nodes).
ENDED_FOR_GOOD = TERMINAL - {Status.FAILURE}
#: A monitor stays quiet when the node it watches has one of these statuses (the original's rule:
#: STOPPED, NOT_STARTED and EXECUTING all call the monitor's hook).
QUIET_FOR_MONITOR = frozenset({Status.COMPLETED, Status.SKIPPED, Status.FAILURE})


class NodeType(models.TextChoices):
    SUB_DAG = "SUB_DAG", "Process"
    PARALLEL_COMPOSITE = "PARALLEL_COMPOSITE", "Parallel group"
    LEAF = "LEAF", "Task"


#: Node types whose ``stop`` hook runs when they are stopped while EXECUTING.
STOP_HOOK_TYPES = frozenset({NodeType.LEAF, NodeType.SUB_DAG})


class NodeKind(models.TextChoices):
    PROCESS = "process", "Process"
    PARALLEL = "parallel", "Parallel group"
    EXECUTOR = "executor", "Executor"
    COMMAND = "command", "Kafka command"
    LISTENER = "listener", "Kafka listener"
    DECISION = "decision", "Decision"
    TRIGGER = "trigger", "Trigger"
    INTERVAL = "interval", "Interval"
    MONITOR = "monitor", "Monitor"


#: Kinds whose work is user code run by a worker (claimed, executed outside the lock, applied).
WORKER_KINDS = frozenset({NodeKind.EXECUTOR, NodeKind.COMMAND, NodeKind.DECISION})
#: Kinds whose worker step is not a plain ``execute`` call (``engine.timing.run_worker_hooks``).
HOOK_KINDS = frozenset({NodeKind.INTERVAL, NodeKind.MONITOR})
#: Kinds a timer's firing hands to a worker to run at once, which the timer sweep claims in the
#: firing transaction and runs itself (``engine.timers``, ``TIMER_RUN_INLINE``).
TIMED_KINDS = frozenset({NodeKind.TRIGGER, NodeKind.INTERVAL})


class StopHook(models.TextChoices):
    """Where a node's ``stop`` hook stands (``Node.stop_hook``); "" when it has none to run."""

    NONE = "", "None"
    PENDING = "pending", "Pending"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class TimerPurpose(models.TextChoices):
    RETRY = "retry", "Retry with backoff"
    TRIGGER = "trigger", "Trigger time"
    INTERVAL = "interval", "Interval poll"
    MONITOR = "monitor", "Monitor deadline"
    DEADLINE = "deadline", "Process max run duration"
    BUFFER_EXPIRY = "buffer_expiry", "Buffered message expiry"


class TimerStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    FIRED = "FIRED", "Fired"
    CANCELLED = "CANCELLED", "Cancelled"


class InboxStatus(models.TextChoices):
    ROUTED = "routed", "Routed"
    BUFFERED = "buffered", "Buffered (listener not started)"
    UNMATCHED = "unmatched", "Unmatched"
    INVALID = "invalid", "Invalid (dead letter)"
    EXPIRED = "expired", "Expired in the buffer"


#: What ``dagger_replay --status`` offers: messages nothing will route again on their own (a
#: replay by id takes a message of any status).
INBOX_REPLAYABLE = (InboxStatus.INVALID, InboxStatus.UNMATCHED, InboxStatus.EXPIRED)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    BUFFERED = "buffered", "Buffered"
    CLAIMED = "claimed", "Being handled"
    DELIVERED = "delivered", "Delivered"
    IGNORED = "ignored", "Ignored"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


#: Deliveries a listener still has to handle (the partial index ``dagger_delivery_open``).
OPEN_DELIVERY = (DeliveryStatus.PENDING, DeliveryStatus.BUFFERED, DeliveryStatus.CLAIMED)


class OutboxKind(models.TextChoices):
    COMMAND = "command", "Sent by a task"
    UPDATE = "update", "Workflow update (task_update_topic)"
    SEND = "send", "Sent outside a task"


class OutboxStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    DEAD = "dead", "Dead (attempts exhausted)"


# -- transitions of the rows written by UPDATE --------------------------------------------------------
Table = Mapping[str, frozenset[str]]

D = DeliveryStatus
#: A delivery is created PENDING (routed to a listener). ``messages.delivery_claim`` claims it, or
#: buffers what its listener cannot take yet, ignores what it will never take, fails it when the
#: listener's class is gone; ``_apply_delivery`` records ``on_message``'s outcome on its CLAIMED
#: row (PENDING again: a retry is due later); ``correlation.listener_started`` makes BUFFERED
#: rows PENDING; the sweeps take a dead worker's claim back (PENDING), re-send a due retry
#: (PENDING) and expire buffered rows past their TTL.
DELIVERY_TRANSITIONS: Table = {
    D.PENDING: frozenset({D.PENDING, D.BUFFERED, D.CLAIMED, D.IGNORED, D.FAILED}),
    D.BUFFERED: frozenset({D.PENDING, D.CLAIMED, D.IGNORED, D.FAILED, D.EXPIRED}),
    # CLAIMED -> CLAIMED: a stale claim (its worker is gone) taken over, or a worker's own again.
    D.CLAIMED: frozenset({D.PENDING, D.BUFFERED, D.CLAIMED, D.DELIVERED, D.IGNORED, D.FAILED}),
    D.DELIVERED: frozenset(),
    D.IGNORED: frozenset(),
    D.FAILED: frozenset(),
    D.EXPIRED: frozenset(),
}

I = InboxStatus  # noqa: E741 - the table reads like the others
_REPLAYED = frozenset({I.ROUTED, I.UNMATCHED, I.INVALID})
#: An inbox row is created ROUTED, UNMATCHED or INVALID. Its deliveries buffered, it is BUFFERED;
#: one of them claimed, ROUTED again; all of them expired, EXPIRED. A replay
#: (``messages.message_replay``, the admin's action and ``dagger_replay``) routes a message of
#: any status again and records the new outcome: ROUTED, UNMATCHED or INVALID.
INBOX_TRANSITIONS: Table = {
    I.ROUTED: frozenset({I.BUFFERED}) | _REPLAYED,
    I.BUFFERED: frozenset({I.EXPIRED}) | _REPLAYED,
    I.UNMATCHED: _REPLAYED,
    I.INVALID: _REPLAYED,
    I.EXPIRED: _REPLAYED,
}

T = TimerStatus
#: A timer is created PENDING; it FIRES once (the sweep or its countdown message, compare-and-set)
#: or is CANCELLED with its node or workflow. FIRED -> PENDING: a sweep's mark taken back when
#: the timer failed to fire (it stays due for the next sweep).
TIMER_TRANSITIONS: Table = {
    T.PENDING: frozenset({T.FIRED, T.CANCELLED}),
    T.FIRED: frozenset({T.PENDING}),
    T.CANCELLED: frozenset(),
}

O = OutboxStatus  # noqa: E741 - the table reads like the others
#: An outbox row is created PENDING; the relay marks it SENT, or DEAD once its attempts are
#: spent; ``outbox_requeue`` (the admin, ``dagger_outbox requeue``) puts a DEAD row back.
OUTBOX_TRANSITIONS: Table = {
    O.PENDING: frozenset({O.SENT, O.DEAD}),
    O.DEAD: frozenset({O.PENDING}),
    O.SENT: frozenset(),
}
del D, I, T, O


def allowed_from(table: Table, to: str) -> tuple[str, ...]:
    """The statuses a row may have when it moves to ``to`` (sorted, for a stable SQL text)."""
    sources = tuple(sorted(str(frm) for frm, tos in table.items() if to in tos))
    if not sources:
        raise ValueError(f"no status may move to {to!r}")
    return sources


def sole_source(table: Table, to: str) -> str:
    """The one status a row moves to ``to`` from: for raw SQL that compares with ``=`` (and the
    partial index it relies on). A table that grows a second source breaks such a statement
    loudly here rather than silently there."""
    sources = allowed_from(table, to)
    if len(sources) != 1:
        raise ValueError(f"{to!r} is reached from {sources}, not from one status")
    return sources[0]


def transition(rows: QuerySet[Any], to: str, **fields: Any) -> int:
    """``rows.update(status=to, **fields)`` for the rows whose status may move to ``to`` in their
    model's ``STATUS_TRANSITIONS``; returns how many rows changed. One ``UPDATE``: the allowed
    sources are part of its ``WHERE``, so a row in any other status is left as it is. A caller's
    own ``status=`` filter on ``rows`` still applies (both must hold)."""
    table: Table = rows.model.STATUS_TRANSITIONS
    return rows.filter(status__in=allowed_from(table, to)).update(status=to, **fields)
