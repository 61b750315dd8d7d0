from __future__ import annotations

import uuid
from typing import Any

from django.db import models

from .workflows import Workflow

#: What each event of :attr:`HistoryRecord.events` holds, by position.
EVENT_FIELDS = ("node_id", "node_name", "from_status", "to_status", "attempt", "reason", "detail")


class HistoryRecord(models.Model):
    """Append-only history: one row per workflow per transaction, holding its events in order.

    Every event of a transaction shares the transaction's clock reading (``created_at``), so an
    event is only what changed: a list in the order of :data:`EVENT_FIELDS`,
    ``[node id, node name, from status, to status, attempt, reason, detail]``, for example
    ``["6f0c...", "Order.process.pay", "SUBMITTED", "EXECUTING", 1, "claimed"]``. The node id is
    null (and the name "") for the workflow's own events; an empty detail is left off. An event
    whose from and to statuses are equal records something other than a status change (a
    parameter edit, a stop hook's outcome). Rows are never updated. Read them through
    ``engine.selectors.workflow_events``; write them through :func:`history_event`.

    Positions rather than named keys: measured on PostgreSQL, a transaction of four events writes
    800 bytes of table and index and 890 of WAL this way, 930 and 1,030 with short keys, 990 and
    1,570 as four one-event rows (docs/internals.md#history).
    """

    id = models.BigAutoField(primary_key=True)
    # Indexed by (workflow, id) below, which also serves lookups and cascades by workflow alone.
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="history", db_index=False)
    created_at = models.DateTimeField()
    events = models.JSONField(default=list)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["workflow", "id"], name="dagger_history_workflow_id"),
            # What happened since a time: the stuck filter's "no record since the cutoff"
            # (engine.selectors.workflow_filter) reads the recent records here, not the
            # newest record of every executing workflow.
            models.Index(fields=["created_at"], name="dagger_history_created"),
        ]

    def __str__(self) -> str:
        return f"{len(self.events)} event(s) of workflow {self.workflow_id} at {self.created_at:%Y-%m-%d %H:%M:%S}"


def history_event(
    *,
    node_id: uuid.UUID | None,
    node_name: str,
    from_status: str,
    to_status: str,
    attempt: int,
    reason: str,
    detail: dict[str, Any] | None,
) -> list[Any]:
    """One event as :attr:`HistoryRecord.events` stores it (see :data:`EVENT_FIELDS`)."""
    event: list[Any] = [
        None if node_id is None else str(node_id),
        node_name,
        from_status,
        to_status,
        attempt,
        reason,
    ]
    if detail:
        event.append(detail)
    return event


def history_fields(event: list[Any]) -> tuple[Any, ...]:
    """The values of a stored event in the order of :data:`EVENT_FIELDS` (the node id a UUID)."""
    node_id = event[0]
    return (
        None if node_id is None else uuid.UUID(node_id),
        event[1],
        event[2],
        event[3],
        event[4],
        event[5],
        event[6] if len(event) > 6 else {},
    )


def history_is_transition(event: list[Any]) -> bool:
    """Whether a stored event is a status change (not a record of something else)."""
    return bool(event[2] != event[3])
