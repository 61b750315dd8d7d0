from __future__ import annotations

from django.db import models

from .workflows import Workflow


class TaskEvent(models.Model):
    """Append-only history: one row per transition of a workflow or one of its nodes.

    ``node_id`` is empty for workflow-level transitions. Rows are never updated.
    """

    id = models.BigAutoField(primary_key=True)
    # Indexed by (workflow, id) below, which also serves lookups and cascades by workflow alone.
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="events", db_index=False)
    node_id = models.UUIDField(null=True, blank=True)
    node_name = models.CharField(max_length=500, blank=True, default="")
    from_status = models.CharField(max_length=16, blank=True, default="")
    to_status = models.CharField(max_length=16)
    attempt = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=64, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["workflow", "id"], name="dagger_event_workflow_id")]

    def __str__(self) -> str:
        return f"{self.node_name or 'workflow'}: {self.from_status or '-'} -> {self.to_status}"
