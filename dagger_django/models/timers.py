from __future__ import annotations

from typing import ClassVar

from django.db import models

from .status import TIMER_TRANSITIONS, Table, TimerPurpose, TimerStatus
from .workflows import Workflow


class Timer(models.Model):
    """A wait on time: a retry's backoff, a trigger, an interval poll, a monitor, a deadline.

    The table is the truth. Timers are claimed with ``SKIP LOCKED`` by the sweep; a Celery message
    with a countdown may fire a timer early for precision, and the compare-and-set on ``status``
    makes the second firing a no-op.
    """

    #: Allowed status changes (``models.status.transition`` writes them).
    STATUS_TRANSITIONS: ClassVar[Table] = TIMER_TRANSITIONS

    id = models.BigAutoField(primary_key=True)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="timers")
    node_id = models.UUIDField(null=True, blank=True)
    purpose = models.CharField(max_length=16, choices=TimerPurpose.choices)
    due_at = models.DateTimeField()
    status = models.CharField(max_length=12, choices=TimerStatus.choices, default=TimerStatus.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["due_at"]
        indexes = [
            models.Index(
                fields=["due_at"],
                name="dagger_timer_pending_due",
                condition=models.Q(status=TimerStatus.PENDING),
            ),
            models.Index(fields=["workflow", "status"], name="dagger_timer_workflow"),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} at {self.due_at:%Y-%m-%d %H:%M:%S} ({self.status})"
