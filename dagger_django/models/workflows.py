from __future__ import annotations

import uuid

from django.db import models

from .status import NodeKind, NodeType, Status, StopHook
from .templates import WorkflowTemplate


class Workflow(models.Model):
    """The root of one running workflow (the original's ``ITemplateDAGInstance``).

    Every transition of any of its nodes starts by locking this row, so all events of one workflow
    (parallel branches, messages, timers) are serialised while different workflows never wait on
    each other.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    template = models.ForeignKey(WorkflowTemplate, on_delete=models.PROTECT, related_name="workflows")
    template_name = models.CharField(max_length=200)
    template_class = models.CharField(max_length=300)
    failure_policy = models.CharField(max_length=16, default="halt")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NOT_STARTED)
    runtime_parameters = models.JSONField(default=dict)
    partition_key_lookup = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - None: no key
    business_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - "" is a valid key
    root_node_id = models.UUIDField(null=True, blank=True)
    update_count = models.PositiveIntegerField(default=0)
    #: Nodes that finished while the workflow was halted (FAILURE): advanced on retry.
    deferred_node_ids = models.JSONField(default=list, blank=True)
    #: Whether a timer was ever created for this workflow (saves a query when it finishes).
    has_timers = models.BooleanField(default=False)
    error = models.TextField(blank=True, default="")
    time_created = models.DateTimeField()
    time_submitted = models.DateTimeField(null=True, blank=True)
    time_completed = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-time_created"]
        # Acting on workflows is a permission of its own: Django's view/change permissions say
        # nothing about who may run business processes (docs/api.md#permissions).
        permissions = [
            ("operate_workflow", "Can create, stop, retry, edit parameters of and replay workflows"),
            ("post_event", "Can post events (messages routed to listeners) through the API"),
        ]
        indexes = [
            models.Index(fields=["status", "-time_created"], name="dagger_wf_status_created"),
            models.Index(fields=["template_name", "-time_created"], name="dagger_wf_template_created"),
            models.Index(fields=["business_key"], name="dagger_wf_business_key"),
            models.Index(fields=["-time_created"], name="dagger_wf_created"),
        ]

    def __str__(self) -> str:
        return f"{self.template_name} {self.id}"


class Node(models.Model):
    """A process, a parallel group or a task of a workflow (``Node.node_type``).

    The whole tree is inserted in one statement when the workflow is created; engine-created
    nodes (monitors) may be added later. ``next_ids`` are the successors (alternatives: the first
    one not SKIPPED is started); ``child_ids`` are what a container starts (a process: its first
    task; a parallel group: the heads of its branches).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="nodes")
    # No constraint and no index: nothing is looked up by parent in the database (the engine
    # loads a workflow's nodes at once), and the workflow's own cascade removes every node, so
    # deleting a workflow never scans other workflows' nodes for children.
    parent = models.ForeignKey(
        "self",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    name = models.CharField(max_length=500)
    node_type = models.CharField(max_length=24, choices=NodeType.choices)
    kind = models.CharField(max_length=16, choices=NodeKind.choices)
    task_class = models.CharField(max_length=300)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NOT_STARTED)
    position = models.PositiveIntegerField(default=0)
    next_ids = models.JSONField(default=list)
    child_ids = models.JSONField(default=list)
    config = models.JSONField(default=dict)
    attempts = models.PositiveIntegerField(default=0)
    lease = models.CharField(max_length=64, blank=True, default="")
    error = models.TextField(blank=True, default="")
    time_created = models.DateTimeField()
    time_submitted = models.DateTimeField(null=True, blank=True)
    time_completed = models.DateTimeField(null=True, blank=True)
    #: The lease's clock: every change of the node, and the heartbeat of the worker running it
    #: (engine/heartbeat.py), move it; recovery hands out nodes whose ``updated_at`` is stale.
    updated_at = models.DateTimeField()
    #: Set when a message for this node is owed: its dispatch failed after commit (broker down),
    #: or recovery re-sent it and waits this long before sending again (backoff). The recovery
    #: sweep sends owed work whose time has come, whatever its lease says. Cleared by a claim.
    redispatch_at = models.DateTimeField(null=True, blank=True)
    #: How many times recovery re-sent this node since it was last claimed (the backoff's exponent).
    redispatches = models.PositiveSmallIntegerField(default=0)
    #: The ``stop`` hook of a node stopped (or skipped by a deadline) while it ran: recorded
    #: PENDING in the stop's transaction, DONE or FAILED once a worker called it.
    stop_hook = models.CharField(max_length=8, choices=StopHook.choices, blank=True, default=StopHook.NONE)
    stop_hook_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position"]
        indexes = [
            models.Index(
                fields=["status", "updated_at"],
                name="dagger_node_active_updated",
                condition=models.Q(status__in=[Status.SUBMITTED, Status.EXECUTING]),
            ),
            # Owed dispatches and pending stop hooks: a handful of rows, read by each recovery sweep.
            models.Index(
                fields=["redispatch_at"],
                name="dagger_node_owed",
                condition=models.Q(redispatch_at__isnull=False),
            ),
            models.Index(
                fields=["updated_at"],
                name="dagger_node_stop_hook_pending",
                condition=models.Q(stop_hook=StopHook.PENDING),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"
