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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Exists, F, Func, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..conf import dagger_settings
from ..exceptions import WorkflowDoesNotExist
from ..models import (
    Delivery,
    DeliveryStatus,
    HistoryRecord,
    InboxMessage,
    InboxStatus,
    NodeKind,
    NodeType,
    OutboxMessage,
    OutboxStatus,
    Status,
    Subscription,
    Timer,
    TimerPurpose,
    TimerStatus,
    Workflow,
    WorkflowTemplate,
)
from ..models.history import history_fields, history_is_transition
from ..models.status import ENDED_FOR_GOOD, INBOX_REPLAYABLE, TERMINAL
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
    # A subquery rather than a join: a count of the list (``.values("pk")``) then reads the
    # status or creation index alone, where the join made it read every counted row.
    template_version = WorkflowTemplate.objects.filter(pk=OuterRef("template_id")).order_by()
    workflows = Workflow.objects.only(*_LIST_FIELDS).annotate(
        version=Subquery(template_version.values("version")[:1])
    )
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
      long: neither the row (``updated_at``) changed nor a history record was written since
      ``now - stuck_for``. The candidates come from the ``(status, time_created)`` index and the
      recent records from the history's ``created_at`` index, so the cost grows with the number
      of executing workflows and of recent transitions, not with the table. A task that runs
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
        # "No history record since the cutoff" rather than "the newest record is older": the
        # records since the cutoff are read once from the history's creation-time index (a
        # hash anti-join), where the newest record of every candidate was one index probe each
        # (10,000 probes, 260 ms, to count a page's worth at a million workflows).
        recent = HistoryRecord.objects.filter(workflow_id=OuterRef("pk"), created_at__gte=cutoff)
        workflows = workflows.filter(status=Status.EXECUTING, updated_at__lt=cutoff).filter(~Exists(recent))
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
    counted = workflows.order_by().values("pk")[:window].count()
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
    return [_node_info(node) for node in sorted(nodes_read(pk), key=lambda n: (n.position, n.time_created))]


def _node_info(node: Any) -> NodeInfo:
    """The :class:`NodeInfo` of a stored node (``engine/state.py``'s in-memory node)."""
    values = {name: getattr(node, name) for name in _NODE_FIELDS}
    values["next_ids"] = [uuid.UUID(str(i)) for i in values["next_ids"] or ()]
    values["child_ids"] = [uuid.UUID(str(i)) for i in values["child_ids"] or ()]
    return NodeInfo(**values)


@dataclass(frozen=True)
class WorkflowDocument:
    """A workflow with every node (``detail.tasks``) and what each node's template set for it
    (``settings``, by node id): its topic, correlatable key, trigger times, operator. The
    engine's own bookkeeping in a node's settings (keys starting with ``_``) is left out."""

    detail: WorkflowDetail
    settings: dict[uuid.UUID, dict[str, Any]]


def workflow_documents_get(*, workflow_ids: list[Any]) -> list[WorkflowDocument]:
    """The :class:`WorkflowDocument` of each of ``workflow_ids``, in that order; an unknown id
    (or one that is not a UUID) is left out. Two queries, however many workflows (the second
    reads the node pages of those that have more than one): for a page of workflows shown whole
    (the original's ``/tasks/instances``)."""
    ids = [pk for pk in map(_uuid, workflow_ids) if pk is not None]
    if not ids:
        return []
    rows = {
        row["id"]: row
        for row in Workflow.objects.filter(pk__in=ids).values(*_DETAIL_FIELDS, version=F("template__version"))
    }
    if not rows:
        return []
    tasks: dict[uuid.UUID, list[NodeInfo]] = {pk: [] for pk in rows}
    settings: dict[uuid.UUID, dict[uuid.UUID, dict[str, Any]]] = {pk: {} for pk in rows}
    for workflow_id, nodes in nodes_read_many(list(rows)).items():
        for node in sorted(nodes, key=lambda n: (n.position, n.time_created)):
            tasks[workflow_id].append(_node_info(node))
            settings[workflow_id][node.id] = {
                k: v for k, v in (node.config or {}).items() if not k.startswith("_")
            }
    return [
        WorkflowDocument(detail=WorkflowDetail(**rows[pk], tasks=tasks[pk]), settings=settings[pk])
        for pk in dict.fromkeys(ids)
        if pk in rows
    ]


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
#: ``GET messages/?status=``: the inbox statuses, and "dead" for the dead letters (``invalid``).
INBOX_STATUS_ALIASES = {"dead": InboxStatus.INVALID}


def inbox_list(*, status: str | None = None) -> QuerySet[InboxMessage]:
    """Inbox messages, newest first, of ``status`` (an inbox status, or ``dead``: the dead
    letters); the raw bytes left unread."""
    messages = InboxMessage.objects.defer("raw", "raw_key").order_by("-id")
    if status:
        messages = messages.filter(status=INBOX_STATUS_ALIASES.get(status, status))
    return messages


def workflow_nodes_waiting_on_time(*, workflow_id: Any) -> set[uuid.UUID]:
    """The nodes of a workflow that have a pending timer (a trigger's time, an interval's next
    poll, a retry's backoff): an operator may skip or complete them (``operations.node_refusal``).
    One query on the timers' ``(workflow, status)`` index."""
    pk = _uuid(workflow_id)
    if pk is None:
        return set()
    return set(
        Timer.objects.filter(workflow_id=pk, status=TimerStatus.PENDING, node_id__isnull=False).values_list(
            "node_id", flat=True
        )
    )


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


# ==================================================================================================
# a workflow's waits: the panels of its admin page (timers, listeners, messages, parameters)
# ==================================================================================================
#: How many rows each panel of a workflow's page shows at most (the rest: a "more" note).
PANEL_LIMIT = 20


@dataclass(frozen=True)
class Bounded:
    """At most ``limit`` rows of something, and whether there were more (``more``)."""

    rows: list[Any]
    more: bool


@dataclass(frozen=True)
class TimerInfo:
    """A PENDING timer of a workflow: what it waits for (``purpose``), of which node, until when."""

    id: int
    node_id: uuid.UUID | None
    #: The dotted name of its node; "" for a timer of the workflow itself or of a node now gone.
    node_name: str
    purpose: str
    due_at: dt.datetime
    attempt: int
    created_at: dt.datetime

    @property
    def purpose_label(self) -> str:
        return _label(TimerPurpose, self.purpose)


def _nodes_by_id(workflow_id: uuid.UUID, nodes: Iterable[NodeInfo] | None) -> dict[uuid.UUID, NodeInfo]:
    """The workflow's nodes by id: ``nodes`` when the caller has read them already (no query),
    else read from the workflow's row (one query, :func:`workflow_nodes`)."""
    if nodes is None:
        nodes = workflow_nodes(workflow_id=workflow_id)
    return {node.id: node for node in nodes}


def _node_name(nodes: Mapping[uuid.UUID, NodeInfo], node_id: Any) -> str:
    node = nodes.get(node_id) if node_id is not None else None
    return node.name if node is not None else ""


def workflow_timers_pending(
    *, workflow_id: Any, limit: int = PANEL_LIMIT, nodes: Iterable[NodeInfo] | None = None
) -> Bounded:
    """The PENDING timers of a workflow (:class:`TimerInfo`), earliest due first, at most
    ``limit``. One query (the timers' ``(workflow, status)`` index), and one more for the nodes'
    names unless ``nodes`` (the workflow's :func:`workflow_nodes`) is given."""
    pk = _uuid(workflow_id)
    if pk is None:
        return Bounded([], False)
    rows = list(
        Timer.objects.filter(workflow_id=pk, status=TimerStatus.PENDING)
        .order_by("due_at", "id")
        .values_list("id", "node_id", "purpose", "due_at", "attempt", "created_at")[: limit + 1]
    )
    if not rows:
        return Bounded([], False)
    by_id = _nodes_by_id(pk, nodes)
    found = [
        TimerInfo(timer_id, node_id, _node_name(by_id, node_id), *rest)
        for timer_id, node_id, *rest in rows[:limit]
    ]
    return Bounded(found, len(rows) > limit)


@dataclass(frozen=True)
class ListenerInfo:
    """A listener node of a workflow with its subscription: the key it waits under, since when,
    and the messages it has still to handle."""

    node_id: uuid.UUID
    node_name: str
    #: The node's status ("" if the node is gone): a NOT_STARTED listener already has its key,
    #: and keeps (buffers) what arrives for it until it starts.
    node_status: str
    topic: str
    key_name: str
    #: None while the runtime parameter it correlates on is unset (nothing matches it then).
    key_value: str | None
    since: dt.datetime
    match_only_one: bool
    #: Deliveries routed to it and not taken yet (``pending``), and kept until it starts
    #: (``buffered``).
    pending: int
    buffered: int

    @property
    def node_status_label(self) -> str:
        return _label(Status, self.node_status)


def _deliveries_of_node(status: str) -> Coalesce:
    """How many deliveries of the outer row's node have ``status`` (the open-deliveries index)."""
    counted = (
        Delivery.objects.filter(node_id=OuterRef("node_id"), status=status)
        .order_by()
        .values("node_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def workflow_listeners_waiting(
    *, workflow_id: Any, limit: int = PANEL_LIMIT, nodes: Iterable[NodeInfo] | None = None
) -> Bounded:
    """The listener nodes of a workflow that wait for messages (:class:`ListenerInfo`: one per
    subscription row, oldest first), at most ``limit``, each with the counts of its pending and
    buffered deliveries. One query, and one more for the nodes' names and statuses unless
    ``nodes`` (the workflow's :func:`workflow_nodes`) is given."""
    pk = _uuid(workflow_id)
    if pk is None:
        return Bounded([], False)
    rows = list(
        Subscription.objects.filter(workflow_id=pk)
        .order_by("id")
        .annotate(
            pending=_deliveries_of_node(DeliveryStatus.PENDING),
            buffered=_deliveries_of_node(DeliveryStatus.BUFFERED),
        )
        .values_list(
            "node_id",
            "topic",
            "key_name",
            "key_value",
            "created_at",
            "match_only_one",
            "pending",
            "buffered",
        )[: limit + 1]
    )
    if not rows:
        return Bounded([], False)
    by_id = _nodes_by_id(pk, nodes)
    found = []
    for node_id, *rest in rows[:limit]:
        node = by_id.get(node_id)
        found.append(ListenerInfo(node_id, node.name if node else "", node.status if node else "", *rest))
    return Bounded(found, len(rows) > limit)


@dataclass(frozen=True)
class MessageInfo:
    """An inbox message that concerns a workflow and needs attention: kept for one of its
    listeners until it starts (a buffered delivery), failed by its listener (a failed delivery),
    or a dead letter (``invalid``) whose Kafka key is one of the workflow's keys."""

    inbox_id: int
    topic: str
    key: str | None
    #: The inbox row's status (``InboxStatus``).
    status: str
    #: The delivery's status for this workflow's listener; "" for a dead letter (never delivered).
    delivery_status: str
    node_name: str
    received_at: dt.datetime
    #: Why: the dead letter's reason and detail, or the failed delivery's outcome and error.
    reason: str
    error: str

    @property
    def replayable(self) -> bool:
        """A dead letter (no delivery) of a status a replay may route again."""
        return not self.delivery_status and self.status in INBOX_REPLAYABLE

    @property
    def status_label(self) -> str:
        label = _label(InboxStatus, self.status)
        if self.delivery_status:
            label += f", delivery {_label(DeliveryStatus, self.delivery_status).lower()}"
        return label


def workflow_messages(
    *,
    workflow_id: Any,
    business_key: str | None,
    limit: int = PANEL_LIMIT,
    nodes: Iterable[NodeInfo] | None = None,
) -> Bounded:
    """The messages of a workflow that wait or failed (:class:`MessageInfo`), newest first, at
    most ``limit``:

    - its buffered and failed deliveries, with their message (the deliveries' workflow index);
    - dead letters (``invalid``) whose Kafka key is the workflow's business key or the key value
      of one of its subscriptions. A dead letter has no delivery, so its key is all that ties it
      to a workflow. The inbox's ``(status, received_at)`` index walks the dead letters newest
      first until ``limit`` match: keep ``INBOX_DEAD_LETTER_RETENTION_DAYS`` set.

    Two queries, and one more for the listeners' names when a delivery is listed and ``nodes``
    (the workflow's :func:`workflow_nodes`) is not given.
    """
    pk = _uuid(workflow_id)
    if pk is None:
        return Bounded([], False)
    found = list(
        Delivery.objects.filter(workflow_id=pk, status__in=[DeliveryStatus.BUFFERED, DeliveryStatus.FAILED])
        .order_by("-message__received_at", "-id")
        .values_list(
            "message_id",
            "message__topic",
            "message__key",
            "message__status",
            "status",
            "node_id",
            "message__received_at",
            "outcome",
            "error",
        )[: limit + 1]
    )
    by_id = _nodes_by_id(pk, nodes) if found else {}
    delivered = [(*row[:5], _node_name(by_id, row[5]), *row[6:]) for row in found]
    keys = Q(key__in=Subscription.objects.filter(workflow_id=pk, key_value__isnull=False).values("key_value"))
    if business_key is not None:
        keys |= Q(key=business_key)
    dead = list(
        InboxMessage.objects.filter(keys, status=InboxStatus.INVALID)
        .order_by("-received_at")  # the index's order alone: the scan stops at the limit
        .values_list("id", "topic", "key", "status", Value(""), Value(""), "received_at", "reason", "detail")[
            : limit + 1
        ]
    )
    rows = sorted((MessageInfo(*row) for row in delivered + dead), key=lambda m: (m.received_at, m.inbox_id))
    rows.reverse()
    return Bounded(rows[:limit], len(rows) > limit)


@dataclass(frozen=True)
class DeclaredParam:
    """A runtime parameter a template declares (``definitions/params.py``)."""

    name: str
    type: str
    required: bool
    has_default: bool
    default: Any
    description: str


@dataclass(frozen=True)
class Declaration:
    """A template's declared runtime parameters; ``allow_extra``: undeclared names are accepted."""

    params: list[DeclaredParam]
    allow_extra: bool

    def get(self, name: str) -> DeclaredParam | None:
        return next((p for p in self.params if p.name == name), None)


def declaration_of(described: Any) -> Declaration | None:
    """The declaration as a stored graph holds it (``graph["parameters"]``), None without one.
    No query."""
    if not isinstance(described, dict):
        return None
    params = [
        DeclaredParam(
            name=str(p.get("name", "")),
            type=str(p.get("type", "any")),
            required=bool(p.get("required", False)),
            has_default="default" in p,
            default=p.get("default"),
            description=str(p.get("description", "")),
        )
        for p in described.get("params", ())
        if isinstance(p, dict)
    ]
    return Declaration(params, bool(described.get("allow_extra", False)))


def template_declaration_get(*, template_id: Any) -> Declaration | None:
    """The declared runtime parameters of a stored template version, None when it declares
    none (or is unknown). One query, which reads the declaration out of the graph, not the
    whole graph."""
    row = WorkflowTemplate.objects.filter(pk=template_id).values_list("graph__parameters", flat=True)
    return declaration_of(next(iter(row), None))


# ==================================================================================================
# the template page: a stored version's graph and its sibling versions
# ==================================================================================================
def template_nodes(*, graph: Mapping[str, Any], created_at: dt.datetime) -> list[NodeInfo]:
    """The nodes of a stored template graph (``WorkflowTemplate.graph``) as :class:`NodeInfo`
    without status, in the graph's order, so that ``graph_view.graph_of`` draws a template as it
    draws a workflow. Ids are derived from the nodes' keys; a node reached from two places (a
    shared template object) appears once, under the first. No query."""
    described = [n for n in graph.get("nodes", ()) if isinstance(n, dict) and "key" in n]
    ids = {n["key"]: uuid.uuid5(uuid.NAMESPACE_URL, f"dagger-template-node:{n['key']}") for n in described}
    by_key = {n["key"]: n for n in described}
    parents: dict[str, str | None] = {}
    names: dict[str, str] = {}

    def place(key: Any, parent: str | None, prefix: str) -> None:
        # Iterative along a chain (chains are long), recursive into containers (shallow).
        while key in by_key and key not in parents:
            node = by_key[key]
            parents[key], names[key] = parent, f"{prefix}.{node.get('name', key)}"
            for child in node.get("children", ()):
                place(child, key, names[key])
            successors = list(node.get("next", ()))
            for other in successors[1:]:
                place(other, parent, prefix)
            key = successors[0] if successors else None

    place(graph.get("root"), None, str(graph.get("name", "")))
    nodes = []
    for position, node in enumerate(described):
        key = node["key"]
        parent = parents.get(key)
        nodes.append(
            NodeInfo(
                id=ids[key],
                parent_id=None if parent is None else ids[parent],
                name=names.get(key, str(node.get("name", key))),
                node_type=str(node.get("node_type", "")),
                kind=str(node.get("kind", "")),
                status="",
                position=position,
                attempts=0,
                error="",
                time_created=created_at,
                time_submitted=None,
                time_completed=None,
                stop_hook="",
                stop_hook_at=None,
                next_ids=[ids[k] for k in node.get("next", ()) if k in ids],
                child_ids=[ids[k] for k in node.get("children", ()) if k in ids],
            )
        )
    return nodes


@dataclass(frozen=True)
class TemplateVersionInfo:
    """One stored version of a template, with how many workflows were created from it."""

    id: int
    name: str
    version: int
    digest: str
    created_at: dt.datetime
    #: Counted up to a cap: ``workflows_exact`` False means "at least ``workflows``".
    workflows: int
    workflows_exact: bool


#: The template page counts a version's workflows up to this many (then shows "1000+").
VERSION_COUNT_CAP = 1000


def template_versions_list(
    *, name: str, limit: int = 50, cap: int = VERSION_COUNT_CAP
) -> tuple[list[TemplateVersionInfo], bool]:
    """The stored versions of template ``name``, newest first, at most ``limit`` (and whether
    there are more), each with its number of workflows counted up to ``cap`` through the
    workflows' template index (never a count of the whole table). One query."""
    window = Workflow.objects.filter(template_id=OuterRef(OuterRef("pk"))).order_by().values("pk")[: cap + 1]
    counted = (
        Workflow.objects.filter(pk__in=window)
        .order_by()
        .annotate(n=Func(F("pk"), function="COUNT", output_field=IntegerField()))
        .values("n")[:1]
    )
    rows = list(
        WorkflowTemplate.objects.filter(name=name)
        .order_by("-version")
        .annotate(workflows_counted=Coalesce(Subquery(counted, output_field=IntegerField()), Value(0)))
        .values_list("id", "name", "version", "digest", "created_at", "workflows_counted")[: limit + 1]
    )
    versions = [TemplateVersionInfo(*row[:5], min(row[5], cap), row[5] <= cap) for row in rows[:limit]]
    return versions, len(rows) > limit


def template_in_use(*, template_id: Any) -> bool:
    """Whether any workflow was created from this stored template version. One query."""
    return Workflow.objects.filter(template_id=template_id).exists()


__all__ = [
    "PANEL_LIMIT",
    "VERSION_COUNT_CAP",
    "Bounded",
    "Declaration",
    "DeclaredParam",
    "Event",
    "ListenerInfo",
    "MessageInfo",
    "TemplateVersionInfo",
    "TimerInfo",
    "declaration_of",
    "NodeInfo",
    "WorkflowDetail",
    "WorkflowDocument",
    "history_transitions_count",
    "inbox_search",
    "outbox_search",
    "template_declaration_get",
    "template_in_use",
    "template_names",
    "template_nodes",
    "template_version_numbers",
    "template_versions_get",
    "template_versions_list",
    "workflow_detail_get",
    "workflow_detail_of",
    "workflow_documents_get",
    "workflow_events",
    "workflow_ended_for_good",
    "workflow_filter",
    "workflow_has_ended",
    "workflow_history_get",
    "workflow_list",
    "workflow_listeners_waiting",
    "workflow_messages",
    "workflow_nodes",
    "workflow_search",
    "workflow_timers_pending",
    "workflows_current_steps",
    "workflows_count",
]


# ==================================================================================================
# what the metrics endpoint reports (dagger_django/observability)
# ==================================================================================================
@dataclass(frozen=True)
class Backlog:
    """How much work waits, fleet-wide, read at scrape time. Each count stops at ``limit`` (a
    count equal to it means "at least"): a scrape costs bounded work however big a backlog grows.
    Ages are in seconds, 0 when nothing waits."""

    workflows_running: int
    workflows_stuck: int
    listeners_waiting: int
    timers_due: int
    timers_late: int
    timer_oldest_due_age: float
    outbox_pending: int
    outbox_oldest_pending_age: float
    outbox_dead: int
    inbox_dead_letters: int
    limit: int


def backlog_get(*, now: dt.datetime, stuck_after: float, late_after: float, limit: int) -> Backlog:
    """The backlog gauges: ten queries, each served by an index and stopped at ``limit`` rows.

    ``stuck_after``: seconds a workflow may stay EXECUTING (since it was submitted) before it
    counts as stuck; ``late_after``: seconds past its due time after which a pending timer is late.
    The indexes: workflows by ``(status, time_created)`` (a workflow submitted before the cut was
    created before it too), subscriptions by id, pending timers by ``due_at`` (partial), pending
    outbox rows by id (partial), dead outbox rows (partial), inbox rows by ``(status, received_at)``.
    """
    limit = max(1, int(limit))
    stuck_cut = now - dt.timedelta(seconds=stuck_after)
    late_cut = now - dt.timedelta(seconds=late_after)
    running = Workflow.objects.filter(status=Status.EXECUTING)
    pending_timers = Timer.objects.filter(status=TimerStatus.PENDING, due_at__lte=now)
    pending_outbox = OutboxMessage.objects.filter(status=OutboxStatus.PENDING)
    querysets: dict[str, QuerySet[Any]] = {
        "workflows_running": running,
        "workflows_stuck": running.filter(time_created__lt=stuck_cut, time_submitted__lt=stuck_cut),
        # Listener nodes with a subscription: started and waiting, or not started yet (their key
        # is registered with the node, and what arrives for them is kept: docs/correlation.md).
        "listeners_waiting": Subscription.objects.all(),
        "timers_due": pending_timers,
        "timers_late": pending_timers.filter(due_at__lt=late_cut),
        "outbox_pending": pending_outbox,
        "outbox_dead": OutboxMessage.objects.filter(status=OutboxStatus.DEAD),
        "inbox_dead_letters": InboxMessage.objects.filter(status=InboxStatus.INVALID),
    }
    counts = {name: qs.values("pk")[:limit].count() for name, qs in querysets.items()}
    oldest_due = pending_timers.order_by("due_at").values_list("due_at", flat=True).first()
    oldest_pending = pending_outbox.order_by("id").values_list("created_at", flat=True).first()
    return Backlog(
        **counts,
        timer_oldest_due_age=max(0.0, (now - oldest_due).total_seconds()) if oldest_due else 0.0,
        outbox_oldest_pending_age=(
            max(0.0, (now - oldest_pending).total_seconds()) if oldest_pending else 0.0
        ),
        limit=limit,
    )
