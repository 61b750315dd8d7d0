"""A read-mostly admin: workflows with their nodes and history, stop and retry as actions;
the message inbox (dead letters, unmatched and expired messages) with replay as an action; the
outbox (pending, sent and dead messages to Kafka) with requeue as an action. Every action needs
``dagger_django.operate_workflow`` (``OperateActionsMixin``), not only the model's view permission.

What the pages show beyond a model's own columns (a workflow's nodes, graph and history, the
template choices, the searches) is read through :mod:`dagger_django.engine.selectors`."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from .engine import selectors
from .exceptions import DaggerError
from .models import Delivery, InboxMessage, OutboxMessage, Timer, Workflow, WorkflowTemplate


class OperateActionsMixin:
    """Admin actions that act on workflows need ``dagger_django.operate_workflow``, whatever
    the model's view/change permissions (``@admin.action(permissions=["operate"])``)."""

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("dagger_django.operate_workflow"))


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TemplateNameFilter(admin.SimpleListFilter):
    """Filter by template, with choices from the (small) template table, not a DISTINCT scan of
    every workflow."""

    title = "template"
    parameter_name = "template_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in selectors.template_names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> QuerySet[Workflow]:
        return selectors.workflow_filter(workflows=queryset, template=self.value())


@admin.register(Workflow)
class WorkflowAdmin(OperateActionsMixin, admin.ModelAdmin):
    list_display = ["id", "template_name", "status", "business_key", "time_created", "time_completed"]
    list_filter = ["status", TemplateNameFilter]
    # Searched exactly by id or business key through get_search_results (indexed lookups).
    search_fields = ["business_key"]
    search_help_text = "A workflow id, or a business key (exact)."
    show_full_result_count = False
    list_select_related = False
    date_hierarchy = None
    readonly_fields = [
        "id",
        "template",
        "template_name",
        "status",
        "failure_policy",
        "business_key",
        "partition_key_lookup",
        "runtime_parameters",
        "error",
        "update_count",
        "time_created",
        "time_submitted",
        "time_completed",
        "updated_at",
    ]
    exclude = ["template_class", "root_node_id", "deferred_node_ids", "has_timers"]
    # The nodes, their graph and the history are shown below the fields (change_form.html),
    # read through the selectors rather than as inlines of their tables.
    actions = ["stop_workflows", "retry_workflows"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Workflow], search_term: str
    ) -> tuple[QuerySet[Workflow], bool]:
        # Exact matches only, so the primary key and the business_key index serve the search
        # (Django's "=field" search compares UPPER(...) and scans the table).
        return selectors.workflow_search(workflows=queryset, term=search_term), False

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Workflow | None = None,
    ) -> HttpResponse:
        # Called once the workflow is found and the user may see it: one query for the nodes
        # (table and graph), one for the history.
        if obj is not None:
            from .graph_view import graph_of

            nodes = selectors.workflow_nodes(workflow_id=obj.pk)
            context["dagger_graph"] = graph_of(nodes)
            context["dagger_nodes"] = nodes
            context["dagger_events"] = [
                (event, json.dumps(event.detail)) for event in selectors.workflow_events(workflow_id=obj.pk)
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _apply(self, request: HttpRequest, queryset: QuerySet[Workflow], service: Any, verb: str) -> None:
        done, failed = 0, []
        for wf_id in queryset.values_list("id", flat=True):
            try:
                service(workflow_id=wf_id)
                done += 1
            except DaggerError as exc:
                failed.append(f"{wf_id}: {exc}")
        if done:
            self.message_user(request, f"{verb} {done} workflow(s).", messages.SUCCESS)
        for text in failed:
            self.message_user(request, text, messages.WARNING)

    @admin.action(description="Stop selected workflows", permissions=["operate"])
    def stop_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        from .engine.services import workflow_stop

        self._apply(request, queryset, workflow_stop, "Stopped")

    @admin.action(description="Retry selected failed workflows", permissions=["operate"])
    def retry_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        from .engine.services import workflow_retry

        self._apply(request, queryset, workflow_retry, "Retried")


@admin.register(WorkflowTemplate)
class WorkflowTemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "digest", "created_at"]
    list_filter = ["name"]
    readonly_fields = ["name", "version", "digest", "graph", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Timer)
class TimerAdmin(admin.ModelAdmin):
    list_display = ["id", "workflow", "purpose", "due_at", "status", "fired_at"]
    list_filter = ["status", "purpose"]
    readonly_fields = [
        "workflow",
        "node_id",
        "purpose",
        "due_at",
        "status",
        "attempt",
        "created_at",
        "fired_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class DeliveryInline(ReadOnlyInline):
    model = Delivery
    fields = ["workflow", "node_id", "status", "attempts", "outcome", "error", "updated_at"]
    readonly_fields = fields
    ordering = ["id"]


@admin.register(InboxMessage)
class InboxMessageAdmin(OperateActionsMixin, admin.ModelAdmin):
    """Every message the bridge or the events endpoint received, with what became of it.

    Dead letters (``invalid``), ``unmatched`` and ``expired`` messages can be routed again with
    the replay action (``engine.messages.message_replay``), e.g. once the listener exists or the
    producer's bug is fixed. Search matches an inbox id, a message id, a Kafka key or a topic,
    exactly (the last three scan the table: keep ``INBOX_RETENTION_DAYS`` set).
    """

    list_display = ["id", "topic", "status", "reason", "matched", "key", "received_at"]
    list_filter = ["status", "source"]
    list_select_related = False
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["replay_messages"]
    inlines = [DeliveryInline]
    readonly_fields = [
        "source",
        "topic",
        "partition",
        "offset",
        "message_id",
        "key",
        "payload",
        "headers",
        "status",
        "reason",
        "detail",
        "matched",
        "received_at",
        "updated_at",
    ]
    exclude = ["raw"]
    search_fields = ["=message_id"]  # the lookup itself is get_search_results below

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[InboxMessage], search_term: str
    ) -> tuple[QuerySet[InboxMessage], bool]:
        return selectors.inbox_search(messages=queryset, term=search_term), False

    @admin.action(description="Replay selected messages (route them again)", permissions=["operate"])
    def replay_messages(self, request: HttpRequest, queryset: QuerySet[InboxMessage]) -> None:
        from .engine.messages import message_replay

        outcomes: dict[str, int] = {}
        for pk in queryset.order_by("id").values_list("id", flat=True):
            try:
                routed = message_replay(inbox_id=pk)
            except InboxMessage.DoesNotExist:
                self.message_user(request, f"Message {pk} is gone (pruned meanwhile).", messages.WARNING)
                continue
            outcomes[routed.status] = outcomes.get(routed.status, 0) + 1
        if outcomes:
            summary = ", ".join(f"{count} {status}" for status, count in sorted(outcomes.items()))
            self.message_user(
                request, f"Replayed {sum(outcomes.values())} message(s): {summary}.", messages.SUCCESS
            )


@admin.register(OutboxMessage)
class OutboxMessageAdmin(OperateActionsMixin, admin.ModelAdmin):
    """Messages waiting to be sent to Kafka, sent, or DEAD (see docs/bridge.md, "The outbox relay").

    A DEAD row failed ``OUTBOX_MAX_ATTEMPTS`` times while the broker answered; its last error
    says why. The newer rows of its ``(topic, key)`` wait behind it ("held by"), so commands of
    one key never arrive out of order. Fix the cause (topic ACL, size), then requeue it.
    Search matches an outbox id, a message id, a topic or a key (its text), exactly.
    """

    list_display = ["id", "topic", "key_text", "kind", "status", "attempts", "error", "created_at", "sent_at"]
    list_filter = ["status", "kind"]
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["requeue_dead"]
    readonly_fields = [
        "message_id",
        "kind",
        "topic",
        "key_text",
        "value_text",
        "headers",
        "workflow_id",
        "node_id",
        "status",
        "held_by",
        "attempts",
        "last_error",
        "created_at",
        "available_at",
        "claimed_until",
        "sent_at",
    ]
    fields = readonly_fields
    search_fields = ["=topic"]  # the lookup itself is get_search_results below

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="key")
    def key_text(self, obj: OutboxMessage) -> str:
        return _text(obj.key)

    @admin.display(description="value")
    def value_text(self, obj: OutboxMessage) -> str:
        return _text(obj.value, limit=20_000)

    @admin.display(description="last error")
    def error(self, obj: OutboxMessage) -> str:
        return obj.last_error[:120]

    @admin.display(description="held by")
    def held_by(self, obj: OutboxMessage) -> str:
        from .engine.outbox import outbox_held_by

        blocker = outbox_held_by(obj)
        return (
            "" if blocker is None else f"outbox message {blocker} (an older message of the same key, unsent)"
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage], search_term: str
    ) -> tuple[QuerySet[OutboxMessage], bool]:
        return selectors.outbox_search(messages=queryset, term=search_term), False

    @admin.action(description="Requeue selected dead messages (send them again)", permissions=["operate"])
    def requeue_dead(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        from .engine.outbox import outbox_requeue

        ids = list(queryset.values_list("id", flat=True))
        count = outbox_requeue(ids=ids)
        skipped = len(ids) - count
        if count:
            self.message_user(request, f"Requeued {count} dead message(s).", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} selected message(s) were not dead and were left as they are.",
                messages.WARNING,
            )


def _text(data: bytes | memoryview | None, limit: int = 200) -> str:
    if data is None:
        return "(none)"
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(raw)} bytes, not UTF-8)"
    return text if len(text) <= limit else text[:limit] + "…"
