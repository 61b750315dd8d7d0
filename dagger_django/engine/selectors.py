"""Every read the pages make: the API, the admin and the graph view ask here, not the tables.

The engine's writers (``services``, ``state``, ``messages``, ``timing``, ``recovery``, ``outbox``)
own how workflows, nodes and their history are stored; this module is the one place that knows
how to read them back for display. A page that reads through these functions keeps working when
the storage changes (nodes kept in the workflow row, history stored one row per transaction):
only the function that reads changes. So a new question a page asks becomes a function here.

Rules: selectors only read (no lock, no write, no dispatch), take keyword-only arguments, are
named ``<noun>_<verb>`` or by what they return, and bound their number of queries (each says
how many). They return querysets of the tables that keep their shape (workflows, templates,
inbox, outbox), for pages that page, filter and search them, and plain dataclasses for what may
move (a workflow's nodes and its history). An id that is not a UUID finds nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.db.models.lookups import LessThan
from django.utils import timezone

from ..conf import dagger_settings
from ..exceptions import WorkflowDoesNotExist
from ..models import (
    HistoryRecord,
    InboxMessage,
    NodeKind,
    NodeType,
    OutboxMessage,
    Status,
    Workflow,
    WorkflowTemplate,
)
from ..models.history import history_fields, history_is_transition
from ..models.status import ENDED_FOR_GOOD, TERMINAL
from .state import nodes_read, nodes_read_many


# ==================================================================================================
# what the pages see
# ==================================================================================================
@dataclass(frozen=True)
class Event:
    """One transition in a workflow's history: of a node, or of the workflow (``node_id`` None)."""

    node_id: uuid.UUID | None
    node_name: str
    from_status: str
    to_status: str
    attempt: int
    reason: str
    detail: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class NodeInfo:
    """A node of a workflow as the pages show it: a process, a parallel group or a task."""

    id: uuid.UUID
    parent_id: uuid.UUID | None
    name: str
    node_type: str
    kind: str
    status: str
    position: int
    attempts: int
    error: str
    time_created: dt.datetime
    time_submitted: dt.datetime | None
    time_completed: dt.datetime | None
    #: The ``stop`` hook of a node stopped while it ran: "pending", "done", "failed" or "".
    stop_hook: str
    stop_hook_at: dt.datetime | None
    #: Successors (alternatives: the first one not SKIPPED runs) and what a container starts.
    next_ids: list[uuid.UUID] = field(default_factory=list)
    child_ids: list[uuid.UUID] = field(default_factory=list)

    @property
    def kind_label(self) -> str:
        return _label(NodeKind, self.kind)

    @property
    def node_type_label(self) -> str:
        return _label(NodeType, self.node_type)

    @property
    def status_label(self) -> str:
        return _label(Status, self.status)


@dataclass(frozen=True)
class WorkflowDetail:
    """A workflow with its template version and every node (``tasks``, in position order)."""

    id: uuid.UUID
    template_name: str
    version: int
    status: str
    runtime_parameters: dict[str, Any]
    business_key: str | None
    partition_key_lookup: str | None
    error: str
    update_count: int
    time_created: dt.datetime
    time_submitted: dt.datetime | None
    time_completed: dt.datetime | None
    updated_at: dt.datetime
    tasks: list[NodeInfo] = field(default_factory=list)


def _label(choices: Any, value: str) -> str:
    try:
        return str(choices(value).label)
    except ValueError:
        return value


def _uuid(value: Any) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


# ==================================================================================================
# templates
# ==================================================================================================
def template_versions_get(*, digests: Mapping[str, str]) -> dict[str, int | None]:
    """The stored version of each template's graph (``{name: digest}``), None if never stored.

    Unlike :func:`dagger_django.engine.services.template_version` this never writes: a template
    gets a version when the first workflow is created from it. One query for all templates.
    """
    if not digests:
        return {}
    rows = WorkflowTemplate.objects.filter(name__in=digests, digest__in=set(digests.values())).values_list(
        "name", "digest", "version"
    )
    stored = {(name, digest): version for name, digest, version in rows}
    return {name: stored.get((name, digest)) for name, digest in digests.items()}


def template_names() -> list[str]:
    """The names of every template a workflow was ever created from (from the small template
    table, not a DISTINCT over the workflows). One query."""
    return list(WorkflowTemplate.objects.order_by("name").values_list("name", flat=True).distinct())


def template_version_numbers() -> list[int]:
    """Every version number any template has (from the small template table), ascending. One
    query."""
    return list(WorkflowTemplate.objects.order_by("version").values_list("version", flat=True).distinct())


# ==================================================================================================
# workflows
# ==================================================================================================
_LIST_FIELDS = (
    "id",
    "template_name",
    "status",
    "business_key",
    "time_created",
    "time_completed",
    "updated_at",
)


def workflow_list(
    *,
    status: str | None = None,
    template: str | None = None,
    key: str | None = None,
    version: int | None = None,
    workflow_id: Any = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    stuck_for: float | None = None,
    now: dt.datetime | None = None,
) -> QuerySet[Workflow]:
    """Workflows newest first, optionally filtered (see :func:`workflow_filter`); each carries its
    template's ``version``.

    Loads neither runtime parameters nor template graphs: one query per page (with the template
    version joined), served by the status, template, creation time and business key indexes.
    """
    workflows = Workflow.objects.only(*_LIST_FIELDS).annotate(version=F("template__version"))
    return workflow_filter(
        workflows=workflows,
        status=status,
        template=template,
        key=key,
        version=version,
        workflow_id=workflow_id,
        created_after=created_after,
        created_before=created_before,
        stuck_for=stuck_for,
        now=now,
    ).order_by("-time_created", "-id")


def workflow_filter(
    *,
    workflows: QuerySet[Workflow],
    status: str | None = None,
    template: str | None = None,
    key: str | None = None,
    version: int | None = None,
    workflow_id: Any = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    stuck_for: float | None = None,
    now: dt.datetime | None = None,
    statuses: list[str] | None = None,
) -> QuerySet[Workflow]:
    """``workflows`` narrowed by exact values; an empty value (None, "") is no filter.

    - ``statuses``: any of these statuses (an empty list finds nothing).
    - ``status``, ``template`` (name), ``key`` (business key), ``workflow_id`` (an id that is not
      a UUID finds nothing): equalities on indexed columns.
    - ``version``: of the template the workflow was created from (a join on the small template
      table; with ``template``, one version of one template).
    - ``created_after`` / ``created_before``: ``time_created >=`` / ``<`` (the creation index).
    - ``stuck_for`` (seconds): ``EXECUTING`` workflows in which nothing happened for at least that
      long: neither the row (``updated_at``) nor its history (the newest record's time, one
      backward step of the history's ``(workflow, id)`` index per candidate) changed since
      ``now - stuck_for``. The candidates come from the ``(status, time_created)`` index, so the
      cost grows with the number of executing workflows, not with the table. A task that runs
      (and heartbeats) for longer than ``stuck_for`` without a transition counts as stuck.
    """
    if status:
        workflows = workflows.filter(status=status)
    if statuses is not None:
        workflows = workflows.filter(status__in=statuses)
    if template:
        workflows = workflows.filter(template_name=template)
    if key:
        workflows = workflows.filter(business_key=key)
    if version is not None:
        workflows = workflows.filter(template__version=version)
    if workflow_id not in (None, ""):
        pk = _uuid(workflow_id)
        workflows = workflows.filter(id=pk) if pk is not None else workflows.none()
    if created_after is not None:
        workflows = workflows.filter(time_created__gte=created_after)
    if created_before is not None:
        workflows = workflows.filter(time_created__lt=created_before)
    if stuck_for is not None:
        cutoff = (now or timezone.now()) - dt.timedelta(seconds=stuck_for)
        last_change = Subquery(
            HistoryRecord.objects.filter(workflow_id=OuterRef("pk")).order_by("-id").values("created_at")[:1]
        )
        # The row's own time stands in for a history that has no record (one subplan, not two).
        workflows = workflows.filter(status=Status.EXECUTING, updated_at__lt=cutoff).filter(
            LessThan(Coalesce(last_change, F("updated_at")), cutoff)
        )
    return workflows


def workflow_search(*, workflows: QuerySet[Workflow], term: str) -> QuerySet[Workflow]:
    """``workflows`` whose id is ``term`` (if it is a UUID) or whose business key is ``term``.

    Exact matches only, so the primary key and the business key index serve the search (a
    case-insensitive or partial match would scan the table). A blank term is no filter.
    """
    term = term.strip()
    if not term:
        return workflows
    pk = _uuid(term)
    if pk is not None:
        return workflows.filter(id=pk)
    return workflows.filter(business_key=term)


def workflows_count(*, workflows: QuerySet[Workflow], at_least: int = 0) -> tuple[int, bool]:
    """How many workflows ``workflows`` holds, and whether that number is exact.

    A full ``COUNT(*)`` grows with the table (41 ms at a million workflows, docs/benchmarks.md),
    so this reads at most ``LIST_COUNT_LIMIT`` rows, or ``at_least`` (the end of the page asked
    for) if that is further: below, the count is exact; at the cap, it is a lower bound.
    ``LIST_COUNT_LIMIT = 0`` counts everything. One query.
    """
    cap = int(dagger_settings.LIST_COUNT_LIMIT)
    if cap <= 0:
        return workflows.count(), True
    window = max(cap, at_least) + 1
    counted = workflows.order_by()[:window].count()
    return counted, counted < window


def workflow_has_ended(*, status: str) -> bool:
    """Whether a workflow in ``status`` has ended: completed, failed, skipped or stopped (a
    FAILURE workflow may still be retried). No query."""
    return status in TERMINAL


def workflow_ended_for_good(*, status: str) -> bool:
    """Whether a workflow in ``status`` never changes again (nothing to stop). No query."""
    return status in ENDED_FOR_GOOD


def workflows_current_steps(*, workflow_ids: list[Any]) -> dict[uuid.UUID, list[str]]:
    """What each of ``workflow_ids`` is doing now: the names of its SUBMITTED or EXECUTING tasks
    (not the processes and groups around them), in position order; a workflow with none is
    absent. For a page of workflows: one query for the whole page (their rows hold their nodes;
    a second for workflows with more than one page of nodes)."""
    ids = [pk for pk in map(_uuid, workflow_ids) if pk is not None]
    if not ids:
        return {}
    steps: dict[uuid.UUID, list[str]] = {}
    for workflow_id, nodes in nodes_read_many(ids).items():
        current = [
            n.name
            for n in sorted(nodes, key=lambda n: n.position)
            if n.node_type == NodeType.LEAF and n.status in (Status.SUBMITTED, Status.EXECUTING)
        ]
        if current:
            steps[workflow_id] = current
    return steps


_DETAIL_FIELDS = (
    "id",
    "template_name",
    "status",
    "runtime_parameters",
    "business_key",
    "partition_key_lookup",
    "error",
    "update_count",
    "time_created",
    "time_submitted",
    "time_completed",
    "updated_at",
)


def workflow_detail_get(*, workflow_id: Any) -> WorkflowDetail:
    """One workflow with its template version and every node: two queries.

    Raises :class:`~dagger_django.exceptions.WorkflowDoesNotExist` for an unknown id (or one
    that is not a UUID).
    """
    pk = _uuid(workflow_id)
    if pk is None:
        raise WorkflowDoesNotExist(f"No workflow with id {workflow_id!r}.")
    row = Workflow.objects.filter(pk=pk).values(*_DETAIL_FIELDS, version=F("template__version")).first()
    if row is None:
        raise WorkflowDoesNotExist(f"No workflow with id {pk}.")
    return WorkflowDetail(**row, tasks=workflow_nodes(workflow_id=pk))


def workflow_detail_of(workflow: Workflow, *, tasks: list[NodeInfo] | None = None) -> WorkflowDetail:
    """The detail of a workflow row already in hand (as a service returned it), without reading
    its nodes: ``tasks`` (default none). For a workflow the service has just deleted."""
    values = {name: getattr(workflow, name) for name in _DETAIL_FIELDS}
    return WorkflowDetail(**values, version=workflow.template.version, tasks=list(tasks or []))


_NODE_FIELDS = (
    "id",
    "parent_id",
    "name",
    "node_type",
    "kind",
    "status",
    "position",
    "attempts",
    "error",
    "time_created",
    "time_submitted",
    "time_completed",
    "stop_hook",
    "stop_hook_at",
    "next_ids",
    "child_ids",
)


def workflow_nodes(*, workflow_id: Any) -> list[NodeInfo]:
    """Every node of a workflow (processes, parallel groups, tasks) in position (creation)
    order; empty for an unknown workflow. One query (two for a workflow with more than one page
    of nodes)."""
    pk = _uuid(workflow_id)
    if pk is None:
        return []
    nodes = []
    for node in sorted(nodes_read(pk), key=lambda n: (n.position, n.time_created)):
        values = {name: getattr(node, name) for name in _NODE_FIELDS}
        values["next_ids"] = [uuid.UUID(str(i)) for i in values["next_ids"] or ()]
        values["child_ids"] = [uuid.UUID(str(i)) for i in values["child_ids"] or ()]
        nodes.append(NodeInfo(**values))
    return nodes


def workflow_events(*, workflow_id: Any) -> list[Event]:
    """The history of a workflow: every transition of it and of its nodes, oldest first (in the
    order they were committed); empty for an unknown workflow. One query.

    Every reader of history goes through this function, so that how history is stored can change
    here alone: one :class:`~dagger_django.models.HistoryRecord` per transaction, whose events
    share its time.
    """
    pk = _uuid(workflow_id)
    if pk is None:
        return []
    records = HistoryRecord.objects.filter(workflow_id=pk).order_by("id").values_list("created_at", "events")
    return [Event(*history_fields(event), created_at) for created_at, events in records for event in events]


def workflow_history_get(*, workflow_id: Any) -> list[Event]:
    """:func:`workflow_events` of a workflow that must exist: one query, two when it has no
    history yet. Raises :class:`~dagger_django.exceptions.WorkflowDoesNotExist` for an unknown id
    (or one that is not a UUID)."""
    pk = _uuid(workflow_id)
    if pk is None:
        raise WorkflowDoesNotExist(f"No workflow with id {workflow_id!r}.")
    events = workflow_events(workflow_id=pk)
    if not events and not Workflow.objects.filter(pk=pk).exists():
        raise WorkflowDoesNotExist(f"No workflow with id {pk}.")
    return events


def history_transitions_count(*, workflow_ids: list[Any] | None = None) -> int:
    """How many status changes the history of ``workflow_ids`` (of every workflow if None) holds:
    the events that are not records of something else. One query, read in chunks."""
    records = HistoryRecord.objects.all()
    if workflow_ids is not None:
        records = records.filter(workflow_id__in=[pk for pk in map(_uuid, workflow_ids) if pk is not None])
    rows = records.values_list("events", flat=True).iterator(chunk_size=2000)
    return sum(1 for events in rows for event in events if history_is_transition(event))


# ==================================================================================================
# messages: the inbox (with its dead letters) and the outbox
# ==================================================================================================
def inbox_search(*, messages: QuerySet[InboxMessage], term: str) -> QuerySet[InboxMessage]:
    """``messages`` whose inbox id, message id, Kafka key or topic is ``term``, exactly.

    The id and message id are indexed; key and topic scan the inbox (keep
    ``INBOX_RETENTION_DAYS`` set). A blank term is no filter.
    """
    term = term.strip()
    if not term:
        return messages
    found = Q(message_id=term) | Q(key=term) | Q(topic=term)
    if term.isdigit():
        found |= Q(pk=int(term))
    return messages.filter(found)


def outbox_search(*, messages: QuerySet[OutboxMessage], term: str) -> QuerySet[OutboxMessage]:
    """``messages`` whose outbox id, message id, topic or key (as UTF-8 text) is ``term``,
    exactly. A blank term is no filter."""
    term = term.strip()
    if not term:
        return messages
    found = Q(topic=term) | Q(key=term.encode("utf-8"))
    if term.isdigit():
        found |= Q(pk=int(term))
    message_id = _uuid(term)
    if message_id is not None:
        found |= Q(message_id=message_id)
    return messages.filter(found)


__all__ = [
    "Event",
    "NodeInfo",
    "WorkflowDetail",
    "history_transitions_count",
    "inbox_search",
    "outbox_search",
    "template_names",
    "template_version_numbers",
    "template_versions_get",
    "workflow_detail_get",
    "workflow_detail_of",
    "workflow_events",
    "workflow_ended_for_good",
    "workflow_filter",
    "workflow_has_ended",
    "workflow_history_get",
    "workflow_list",
    "workflow_nodes",
    "workflow_search",
    "workflows_current_steps",
    "workflows_count",
]
