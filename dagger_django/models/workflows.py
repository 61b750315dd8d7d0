from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.db import models

from .status import Status, StopHook
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
    #: The workflow's nodes, the first page of them (``engine/state.py`` ``PAGE_SIZE``), each a
    #: list in the order of ``engine.state.NODE_FIELDS``; further pages are :class:`NodePage` rows.
    #: Read and written by ``engine/state.py`` only (docs/internals.md, "Node state in the
    #: workflow row").
    nodes = models.JSONField(default=list)
    #: How many :class:`NodePage` rows the workflow has (0: all its nodes are in ``nodes``).
    node_pages = models.PositiveIntegerField(default=0)
    #: What recovery looks for, kept by every write of the nodes (each has a partial index):
    #: the oldest ``updated_at`` of its leased work (SUBMITTED or EXECUTING tasks that owe no
    #: re-send and wait on no timer), the earliest ``redispatch_at`` of its nodes (owed sends and
    #: re-send backoffs), and the oldest ``updated_at`` of its nodes whose stop hook is PENDING.
    leased_since = models.DateTimeField(null=True, blank=True)
    resend_at = models.DateTimeField(null=True, blank=True)
    stop_hooks_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-time_created"]
        # Acting on workflows is a permission of its own: Django's view/change permissions say
        # nothing about who may run business processes (docs/api.md#permissions).
        permissions = [
            (
                "operate_workflow",
                "Can create, stop, retry and resume workflows, skip or complete their tasks, fire their "
                "timers, edit their parameters, replay messages and requeue outbox sends",
            ),
            ("post_event", "Can post events (messages routed to listeners) through the API"),
        ]
        indexes = [
            models.Index(fields=["status", "-time_created"], name="dagger_wf_status_created"),
            models.Index(fields=["template_name", "-time_created"], name="dagger_wf_template_created"),
            models.Index(fields=["business_key"], name="dagger_wf_business_key"),
            models.Index(fields=["-time_created"], name="dagger_wf_created"),
            models.Index(
                fields=["leased_since"],
                name="dagger_wf_leased",
                condition=models.Q(leased_since__isnull=False),
            ),
            models.Index(
                fields=["resend_at"], name="dagger_wf_resend", condition=models.Q(resend_at__isnull=False)
            ),
            models.Index(
                fields=["stop_hooks_since"],
                name="dagger_wf_stop_hooks",
                condition=models.Q(stop_hooks_since__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.template_name} {self.id}"


class NodePage(models.Model):
    """The nodes of a workflow beyond its first page (``Workflow.nodes``): ``PAGE_SIZE`` nodes
    each, in the same form. A step rewrites only the pages whose nodes it changed, so a workflow
    of 1,000 nodes does not rewrite 1,000 nodes per step. Written by ``engine/state.py`` only."""

    id = models.BigAutoField(primary_key=True)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="+", db_index=False)
    number = models.PositiveIntegerField()
    nodes = models.JSONField(default=list)

    class Meta:
        ordering = ["workflow", "number"]
        constraints = [models.UniqueConstraint(fields=["workflow", "number"], name="dagger_nodepage_uniq")]

    def __str__(self) -> str:
        return f"page {self.number} of workflow {self.workflow_id}"


#: The fields of a node, in the order a node is stored in ``Workflow.nodes`` / ``NodePage.nodes``
#: (``engine/state.py`` encodes and decodes them; nothing else knows the positions).
NODE_FIELDS = (
    "id",
    "parent_id",
    "name",
    "node_type",
    "kind",
    "task_class",
    "status",
    "position",
    "next_ids",
    "child_ids",
    "config",
    "attempts",
    "lease",
    "error",
    "time_created",
    "time_submitted",
    "time_completed",
    "updated_at",
    "redispatch_at",
    "redispatches",
    "stop_hook",
    "stop_hook_at",
    "waiting",
)

_NODE_DEFAULTS: dict[str, object] = {
    "parent_id": None,
    "status": Status.NOT_STARTED,
    "position": 0,
    "attempts": 0,
    "lease": "",
    "error": "",
    "time_submitted": None,
    "time_completed": None,
    "redispatch_at": None,
    "redispatches": 0,
    "stop_hook": StopHook.NONE,
    "stop_hook_at": None,
    "waiting": None,
}


class Node:
    """A process, a parallel group or a task of a workflow (``node_type``), in memory.

    Not a table: a workflow's nodes are stored in its row (``Workflow.nodes``) and its
    :class:`NodePage` rows, and loaded, changed and written as a whole by ``engine/state.py``.
    The whole tree is created with the workflow; engine-created nodes (monitors) may be added
    later. ``next_ids`` are the successors (alternatives: the first one not SKIPPED is started);
    ``child_ids`` are what a container starts (a process: its first task; a parallel group: the
    heads of its branches).

    ``updated_at`` is the lease's clock: every change of the node, and the heartbeat of the worker
    running it (engine/heartbeat.py), move it; recovery hands out nodes whose ``updated_at`` is
    stale. ``redispatch_at`` is set when a message for the node is owed (its dispatch failed
    after commit, or recovery re-sent it and waits before sending again); ``redispatches``
    counts those re-sends since its last claim. ``stop_hook`` is the ``stop`` hook of a node
    stopped while it ran: PENDING in the stop's transaction, DONE or FAILED once a worker called
    it (at ``stop_hook_at``). ``waiting`` is the attempt whose PENDING timer the node waits on
    (a retry's backoff, a trigger's time), None when it waits on none.
    """

    __slots__ = (*NODE_FIELDS, "workflow_id", "page")

    id: uuid.UUID
    workflow_id: uuid.UUID
    parent_id: uuid.UUID | None
    name: str
    node_type: str
    kind: str
    task_class: str
    status: str
    position: int
    next_ids: list[str]
    child_ids: list[str]
    config: dict[str, Any]
    attempts: int
    lease: str
    error: str
    time_created: dt.datetime
    time_submitted: dt.datetime | None
    time_completed: dt.datetime | None
    updated_at: dt.datetime
    redispatch_at: dt.datetime | None
    redispatches: int
    stop_hook: str
    stop_hook_at: dt.datetime | None
    waiting: int | None
    #: The page the node is stored on (0: the workflow row); None until it is first written.
    page: int | None

    def __init__(self, **values: Any) -> None:
        self.page = values.pop("page", None)
        if "id" not in values:
            values["id"] = uuid.uuid4()
        for name, default in _NODE_DEFAULTS.items():
            if name not in values:
                values[name] = default
        if "next_ids" not in values:
            values["next_ids"] = []
        if "child_ids" not in values:
            values["child_ids"] = []
        if "config" not in values:
            values["config"] = {}
        for name, value in values.items():
            setattr(self, name, value)

    @property
    def pk(self) -> uuid.UUID:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<Node: {self}>"

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"
