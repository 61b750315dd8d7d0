"""A read-mostly admin: workflows with their nodes and history; stop, retry and resume as actions
and as buttons of a workflow's page, with skip and complete on its waiting or failed tasks, an
edit of its runtime parameters and firing a timer now (``engine/operations.py``), each confirmed
and recorded in its history with the user and a reason; timers with "fire now" as an action;
the message inbox (dead letters, unmatched and expired messages) with replay as an action; the
outbox (pending, sent and dead messages to Kafka) with requeue as an action. Every action needs
``dagger_django.operate_workflow`` (``OperateActionsMixin``), not only the model's view permission.

What the pages show beyond a model's own columns (a workflow's nodes, graph and history, the
template choices, the searches) is read through :mod:`dagger_django.engine.selectors`."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode

from .engine import ports, selectors
from .exceptions import DaggerError
from .models import (
    Delivery,
    InboxMessage,
    NodeKind,
    OutboxMessage,
    Status,
    Timer,
    Workflow,
    WorkflowTemplate,
)


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


class TemplateVersionFilter(admin.SimpleListFilter):
    """Filter by the version of the template a workflow was created from (with the template
    filter: one version of one template)."""

    title = "template version"
    parameter_name = "template_version"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(version), f"v{version}") for version in selectors.template_version_numbers()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> QuerySet[Workflow]:
        value = self.value()
        if not value or not value.isdigit():
            return queryset
        return selectors.workflow_filter(workflows=queryset, version=int(value))


#: (parameter value, label, seconds) of the age and stuck filters.
AGES = (("1h", "Last hour", 3600), ("1d", "Last day", 86_400), ("1w", "Last week", 7 * 86_400))
STUCK = (("5m", "5 min", 300), ("1h", "1 h", 3600), ("1d", "1 day", 86_400))


class AgeFilter(admin.SimpleListFilter):
    """Workflows created within the last hour, day or week (the creation time index)."""

    title = "created"
    parameter_name = "created"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, label) for value, label, _seconds in AGES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> QuerySet[Workflow]:
        seconds = {value: seconds for value, _label, seconds in AGES}.get(self.value() or "")
        if seconds is None:
            return queryset
        after = timezone.now() - dt.timedelta(seconds=seconds)
        return selectors.workflow_filter(workflows=queryset, created_after=after)


class StuckFilter(admin.SimpleListFilter):
    """EXECUTING workflows in which nothing changed for at least the threshold (the API's
    ``stuck_for``: neither the row nor its history)."""

    title = "stuck (nothing happened for)"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, label) for value, label, _seconds in STUCK]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> QuerySet[Workflow]:
        seconds = {value: seconds for value, _label, seconds in STUCK}.get(self.value() or "")
        if seconds is None:
            return queryset
        return selectors.workflow_filter(workflows=queryset, stuck_for=seconds)


def human_duration(delta: dt.timedelta | None) -> str:
    """``delta`` as a person says it, to two units: "45 s", "3 min", "2 h 5 min", "3 d 4 h"."""
    if delta is None:
        return "-"
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86_400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        rest = minutes % 60
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    rest = hours % 24
    return f"{days} d {rest} h" if rest else f"{days} d"


#: Colours of the status badge (text on a light background, readable in both admin themes).
BADGE_COLOURS = {
    Status.NOT_STARTED: ("#555", "#eee"),
    Status.SUBMITTED: ("#0d47a1", "#e3f2fd"),
    Status.EXECUTING: ("#0d47a1", "#e3f2fd"),
    Status.COMPLETED: ("#1b5e20", "#e8f5e9"),
    Status.FAILURE: ("#b71c1c", "#fdecea"),
    Status.SKIPPED: ("#555", "#eee"),
    Status.STOPPED: ("#4e342e", "#efebe9"),
}


class WorkflowChangeList(ChangeList):
    """Reads the current step(s) of the page's workflows in one query, once the page is known;
    leaves the runtime parameters (which may be large) unread."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Workflow]:
        # Neither the parameters nor the nodes (stored in the row) are shown in the list.
        return super().get_queryset(request, exclude_parameters).defer("runtime_parameters", "nodes")

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        steps = selectors.workflows_current_steps(workflow_ids=[wf.pk for wf in self.result_list])
        for wf in self.result_list:
            wf._dagger_current_steps = steps.get(wf.pk, [])


class WorkflowPaginator(Paginator):
    """Pages whose count stops at ``LIST_COUNT_LIMIT`` rows, or at the end of the page asked for
    (``at_least``) if that is further, like the API list's (``selectors.workflows_count``).

    Django's admin counts the filtered workflows on every request: a full ``COUNT(*)``, which
    grows with the table (and with the stuck filter, runs its history subquery for every
    executing workflow). At the cap the count is a lower bound (``count_exact`` false): the page
    links reach one page past it, and the next page moves the cap on.
    """

    at_least = 0
    count_exact = True

    @cached_property
    def count(self) -> int:
        counted, self.count_exact = selectors.workflows_count(
            workflows=self.object_list, at_least=self.at_least
        )
        return counted


@admin.register(Workflow)
class WorkflowAdmin(OperateActionsMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "template_name",
        "status_badge",
        "current_steps",
        "business_key",
        "error_summary",
        "age",
        "duration",
    ]
    list_filter = [
        "status",
        TemplateNameFilter,
        TemplateVersionFilter,
        AgeFilter,
        StuckFilter,
    ]
    # Searched exactly by id or business key through get_search_results (indexed lookups).
    search_fields = ["business_key"]
    search_help_text = "A workflow id, or a business key (exact)."
    show_full_result_count = False
    # Facet counts are a COUNT per filter choice over the whole table: never on this page.
    show_facets = admin.ShowFacets.NEVER
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
        "error",
        "update_count",
        "time_created",
        "time_submitted",
        "time_completed",
        "updated_at",
    ]
    exclude = [
        "template_class",
        "root_node_id",
        "deferred_node_ids",
        "has_timers",
        "runtime_parameters",
        # the engine's storage of the nodes and recovery's marks (docs/internals.md)
        "nodes",
        "node_pages",
        "leased_since",
        "resend_at",
        "stop_hooks_since",
    ]
    # The graph, the panels (runtime parameters, pending timers, waiting listeners, messages),
    # the nodes and the history are shown around the fields (change_form.html), read through
    # the selectors rather than as inlines of their tables.
    actions = ["stop_workflows", "retry_workflows", "resume_workflows"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Only an ended workflow (completed, failed, skipped or stopped) may be deleted: one that
        runs or waits would lose the work in flight. The bulk action asks this of every selected
        workflow and deletes nothing while one of them has not ended."""
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or selectors.workflow_has_ended(status=obj.status))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # Nothing here is edited (has_change_permission only lets the page be read): say so.
        return super().change_view(
            request, object_id, form_url, {"title": "View workflow", **(extra_context or {})}
        )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return WorkflowChangeList

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: QuerySet[Workflow],
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> Paginator:
        paginator = WorkflowPaginator(queryset, per_page, orphans, allow_empty_first_page)
        page = request.GET.get(PAGE_VAR, "1")
        paginator.at_least = per_page * int(page) if page.isdigit() else 0
        return paginator

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Workflow) -> str:
        colour, background = BADGE_COLOURS.get(obj.status, ("#555", "#eee"))
        return format_html(
            '<span class="dagger-badge" data-status="{}" style="color:{};background:{};'
            'padding:1px 6px;border-radius:8px;font-weight:600;white-space:nowrap">{}</span>',
            obj.status,
            colour,
            background,
            obj.get_status_display(),
        )

    @admin.display(description="current step(s)")
    def current_steps(self, obj: Workflow) -> str:
        """The running or waiting tasks by their own name (the full dotted name on hover)."""
        names = getattr(obj, "_dagger_current_steps", [])
        if not names:
            return "-"
        return format_html(
            '<span title="{}">{}</span>',
            ", ".join(names),
            ", ".join(name.rsplit(".", 1)[-1] for name in names),
        )

    @admin.display(description="error")
    def error_summary(self, obj: Workflow) -> str:
        first = (obj.error or "").strip().splitlines()[:1]
        if not first:
            return "-"
        line = first[0]
        return line if len(line) <= 80 else line[:79] + "…"

    @admin.display(description="age", ordering="-time_created")
    def age(self, obj: Workflow) -> str:
        return human_duration(timezone.now() - obj.time_created)

    @admin.display(description="duration")
    def duration(self, obj: Workflow) -> str:
        """From submission to the end, or to now while it runs ("-" if never submitted)."""
        if obj.time_submitted is None:
            return "-"
        return human_duration((obj.time_completed or timezone.now()) - obj.time_submitted)

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
        # (table and graph), one for the history, and five for the panels, whatever the size
        # of the workflow (each panel shows at most selectors.PANEL_LIMIT rows).
        if obj is not None:
            from .graph_view import graph_of

            nodes = selectors.workflow_nodes(workflow_id=obj.pk)
            context["dagger_graph"] = graph_of(nodes)
            context["dagger_nodes"] = nodes
            context["dagger_events"] = timeline(selectors.workflow_events(workflow_id=obj.pk))
            operate = self.has_operate_permission(request)
            rows = node_rows(obj, nodes, operate=operate)
            context["dagger_node_rows"] = rows
            context.update(
                self.panels(
                    request,
                    obj,
                    operate=operate,
                    node_actions={row.node.id: row.actions for row in rows},
                    nodes=nodes,
                )
            )
            context["dagger_can_stop"] = operate and not selectors.workflow_ended_for_good(status=obj.status)
            context["dagger_can_retry"] = operate and obj.status == Status.FAILURE
            context["dagger_can_resume"] = operate and obj.status == Status.STOPPED
            context["dagger_can_edit_parameters"] = operate and obj.status not in (
                Status.COMPLETED,
                Status.SKIPPED,
            )
        # Nothing on this page can be saved: no save buttons (a POST would only be refused).
        context.update(show_save=False, show_save_and_continue=False, show_save_and_add_another=False)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The HISTORY button: the workflow's own history (every transition of it and its nodes,
        who acted and why), not Django's change log, which this read-only admin never writes."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": f"History: {obj}",
            "subtitle": None,
            "module_name": str(self.opts.verbose_name_plural).capitalize(),
            "object": obj,
            "opts": self.opts,
            "preserved_filters": self.get_preserved_filters(request),
            "dagger_events": timeline(selectors.workflow_events(workflow_id=obj.pk)),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/dagger_django/workflow/object_history.html", context)

    def panels(
        self,
        request: HttpRequest,
        obj: Workflow,
        *,
        operate: bool = False,
        node_actions: dict[Any, tuple[str, ...]] | None = None,
        nodes: list[selectors.NodeInfo] | None = None,
    ) -> dict[str, Any]:
        """The panels of a workflow's page: its runtime parameters (marked against the
        template's declaration), pending timers, waiting listeners and the messages that wait or
        failed. Five queries (two for the messages). With ``operate``, a timer row offers Fire
        now, a listener row the Skip/Complete its node row offers (``node_actions``), and a dead
        letter Replay."""
        node_actions = node_actions or {}
        ended = selectors.workflow_ended_for_good(status=obj.status)
        now = ports.now()
        declaration = selectors.template_declaration_get(template_id=obj.template_id)
        if nodes is None:
            nodes = selectors.workflow_nodes(workflow_id=obj.pk)
        timers = selectors.workflow_timers_pending(workflow_id=obj.pk, nodes=nodes)
        listeners = selectors.workflow_listeners_waiting(workflow_id=obj.pk, nodes=nodes)
        inbox = selectors.workflow_messages(workflow_id=obj.pk, business_key=obj.business_key, nodes=nodes)
        may_see_inbox = request.user.has_perm("dagger_django.view_inboxmessage")
        return {
            "dagger_panel_limit": selectors.PANEL_LIMIT,
            "dagger_declaration": declaration,
            "dagger_parameters": parameter_rows(obj.runtime_parameters, declaration),
            "dagger_timers": selectors.Bounded(
                [TimerRow(t, now, fire=operate and not ended) for t in timers.rows], timers.more
            ),
            "dagger_timers_url": (
                _changelist("timer", workflow__id__exact=obj.pk, status__exact="PENDING")
                if request.user.has_perm("dagger_django.view_timer")
                else ""
            ),
            "dagger_listeners": selectors.Bounded(
                [ListenerRow(x, now, node_actions.get(x.node_id, ())) for x in listeners.rows],
                listeners.more,
            ),
            "dagger_messages": selectors.Bounded(
                [
                    MessageRow(
                        m,
                        _inbox_url(m.inbox_id) if may_see_inbox else "",
                        replay=operate and m.replayable,
                    )
                    for m in inbox.rows
                ],
                inbox.more,
            ),
        }

    # -- operating on the workflow's own page: a confirmation with a reason, then a POST --------------
    OPERATIONS = {
        "stop": ("Stop", "Stopped", "Every unfinished task is stopped; the workflow ends STOPPED."),
        "retry": ("Retry", "Retried", "The failed task(s) run again; the workflow is EXECUTING again."),
        "resume": (
            "Resume",
            "Resumed",
            "The tasks the stop ended run or wait again; the workflow continues where it stopped.",
        ),
    }
    NODE_OPERATIONS = {
        "skip": ("Skip", "Skipped", "The task ends SKIPPED and the workflow moves on to what follows it."),
        "complete": (
            "Complete",
            "Completed",
            "The task ends COMPLETED as if it had succeeded (its code does not run); the next step starts.",
        ),
    }

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        own = [
            path(
                f"<path:object_id>/{operation}/",
                view(self.operate_view),
                {"operation": operation},
                name="{}_{}_{}".format(*info, operation),
            )
            for operation in self.OPERATIONS
        ]
        own += [
            # admin:dagger_django_workflow_node_action (workflow id, node id, "skip"/"complete")
            path(
                "<path:object_id>/nodes/<str:node_id>/<str:action>/",
                view(self.node_action_view),
                name="{}_{}_node_action".format(*info),
            ),
            # admin:dagger_django_workflow_fire_timer (workflow id, timer id)
            path(
                "<path:object_id>/timers/<str:timer_id>/fire/",
                view(self.fire_timer_view),
                name="{}_{}_fire_timer".format(*info),
            ),
            # admin:dagger_django_workflow_replay_message (workflow id, inbox id)
            path(
                "<path:object_id>/messages/<str:inbox_id>/replay/",
                view(self.replay_message_view),
                name="{}_{}_replay_message".format(*info),
            ),
            # admin:dagger_django_workflow_parameters (workflow id)
            path(
                "<path:object_id>/runtime-parameters/",
                view(self.parameters_view),
                name="{}_{}_parameters".format(*info),
            ),
        ]
        return own + super().get_urls()

    def _operable(self, request: HttpRequest, object_id: str) -> Workflow | None:
        """The workflow, if the user may see it and operate it (PermissionDenied if not)."""
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and not (
            self.has_view_permission(request, obj) and self.has_operate_permission(request)
        ):
            raise PermissionDenied
        return obj

    def _confirmation(self, request: HttpRequest, obj: Workflow, **context: Any) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "object": obj,
            "cancel_url": self._page(obj),
            **context,
        }
        return TemplateResponse(request, "admin/dagger_django/workflow/operate_confirmation.html", context)

    def _page(self, obj: Workflow) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])

    def _act(self, request: HttpRequest, obj: Workflow, label: str, done: str, call: Any) -> HttpResponse:
        """Do ``call(actor=, reason=)`` and report it with ``message_user``; back to the page."""
        reason = request.POST.get("reason", "").strip()[:1000]
        try:
            call(actor=request.user.get_username(), reason=reason)
        except DaggerError as exc:
            self.message_user(request, f"{label} refused: {exc}", messages.WARNING)
        else:
            said = f" ({reason})" if reason else ""
            self.message_user(request, f"{done}{said}.", messages.SUCCESS)
        return HttpResponseRedirect(self._page(obj))

    def operate_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        """``GET``: what the operation does and a field for the reason; ``POST`` (with the CSRF
        token): do it through the engine, record the user and the reason in the workflow's
        history, report with ``message_user`` and go back to the workflow's page."""
        from .engine import operations, services

        obj = self._operable(request, object_id)
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        label, done, effect = self.OPERATIONS[operation]
        if request.method == "POST":
            service = {
                "stop": services.workflow_stop,
                "retry": services.workflow_retry,
                "resume": operations.workflow_resume,
            }[operation]
            return self._act(
                request, obj, label, f"{done} workflow {obj.pk}", partial(service, workflow_id=obj.pk)
            )
        return self._confirmation(
            request, obj, title=f"{label} workflow {obj.pk}?", operation=operation, label=label, effect=effect
        )

    def node_action_view(
        self, request: HttpRequest, object_id: str, node_id: str, action: str
    ) -> HttpResponse:
        """Skip or complete one task of the workflow (``operations.node_skip``/``node_complete``):
        a confirmation with a reason, then the POST, as for stop."""
        from .engine import operations

        if action not in self.NODE_OPERATIONS:
            raise Http404(f"No action {action!r} on a task.")
        obj = self._operable(request, object_id)
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        node = next((n for n in selectors.workflow_nodes(workflow_id=obj.pk) if str(n.id) == node_id), None)
        if node is None:
            self.message_user(request, f"Workflow {obj.pk} has no task {node_id}.", messages.WARNING)
            return HttpResponseRedirect(self._page(obj))
        label, done, effect = self.NODE_OPERATIONS[action]
        if request.method == "POST":
            service = operations.node_skip if action == "skip" else operations.node_complete
            call = partial(service, workflow_id=obj.pk, node_id=node.id)
            return self._act(request, obj, label, f"{done} task {node.name}", call)
        subject = f"task {node.name} ({node.kind_label}, now {node.status_label})"
        return self._confirmation(
            request, obj, title=f"{label} task {node.name}?", label=label, effect=effect, subject=subject
        )

    def fire_timer_view(self, request: HttpRequest, object_id: str, timer_id: str) -> HttpResponse:
        """Fire a pending timer of the workflow now (``operations.timer_fire_now``)."""
        from .engine import operations

        obj = self._operable(request, object_id)
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        effect = "The timer fires now instead of at its time: a trigger runs, an interval polls, a retry's wait ends."
        if request.method == "POST":
            call = partial(operations.timer_fire_now, timer_id=timer_id, workflow_id=obj.pk)
            return self._act(request, obj, "Fire now", f"Fired timer {timer_id} of workflow {obj.pk}", call)
        return self._confirmation(
            request,
            obj,
            title=f"Fire timer {timer_id} now?",
            label="Fire",
            effect=effect,
            subject=f"timer {timer_id}",
        )

    def replay_message_view(self, request: HttpRequest, object_id: str, inbox_id: str) -> HttpResponse:
        """Route a dead letter listed on the workflow's page again (``operations.message_replay``),
        recording the user and the reason on the message and in the history of each workflow it
        reaches; the outcome (routed, or dead again and why) is reported."""
        from .engine import operations

        obj = self._operable(request, object_id)
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        effect = "The message is routed again, as if it had just arrived (fix its cause first)."
        if request.method == "POST":
            outcome: dict[str, Any] = {}

            def replay(*, actor: str, reason: str) -> None:
                outcome["routed"] = operations.message_replay(inbox_id=inbox_id, actor=actor, reason=reason)

            label = f"Replayed message {inbox_id}"
            response = self._act(request, obj, "Replay", label, replay)
            routed = outcome.get("routed")
            if routed is not None:
                self.message_user(request, f"Message {inbox_id} is now {routed.status}.", messages.INFO)
            return response
        return self._confirmation(
            request,
            obj,
            title=f"Replay message {inbox_id}?",
            label="Replay",
            effect=effect,
            subject=f"message {inbox_id}",
        )

    def parameters_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Edit the runtime parameters: a JSON object merged into them (keys given replace, the
        others stay; listeners keyed on a changed one are re-keyed), with a reason. Invalid JSON,
        or anything but an object, is shown again with the error and nothing changes."""
        from .engine import services

        obj = self._operable(request, object_id)
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        text = pretty_json(obj.runtime_parameters)
        error = ""
        if request.method == "POST":
            text = request.POST.get("parameters", "")
            try:
                changes = json.loads(text)
            except (ValueError, RecursionError) as exc:
                error = f"Not JSON: {exc}"
            else:
                if isinstance(changes, dict):
                    call = partial(services.workflow_update_parameters, workflow_id=obj.pk, changes=changes)
                    return self._act(
                        request,
                        obj,
                        "Edit runtime parameters",
                        f"Changed the runtime parameters of {obj.pk}",
                        call,
                    )
                error = 'The changes must be a JSON object ({"name": value, ...}).'
        return self._confirmation(
            request,
            obj,
            title=f"Edit the runtime parameters of workflow {obj.pk}",
            label="Save",
            effect="The object below is merged into the runtime parameters: keys given replace, others stay.",
            subject="the runtime parameters",
            parameters=text,
            error=error,
        )

    def _apply(self, request: HttpRequest, queryset: QuerySet[Workflow], service: Any, verb: str) -> None:
        done, failed = 0, []
        for wf_id in queryset.values_list("id", flat=True):
            try:
                service(workflow_id=wf_id, actor=request.user.get_username())
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

    @admin.action(description="Resume selected stopped workflows", permissions=["operate"])
    def resume_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        from .engine.operations import workflow_resume

        self._apply(request, queryset, workflow_resume, "Resumed")


@admin.register(WorkflowTemplate)
class WorkflowTemplateAdmin(admin.ModelAdmin):
    """A stored version of a template: its graph drawn as a workflow's is (without statuses),
    its declared runtime parameters, its sibling versions with their workflows, all read-only.
    A version that workflows were created from cannot be deleted (they are pinned to it). In
    place of Django's HISTORY button (its change log, which nothing here writes) the page offers
    the workflows created from this version."""

    list_display = ["name", "version", "digest", "created_at"]
    list_filter = ["name"]
    readonly_fields = ["name", "version", "digest", "created_at"]
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Readable with the view permission; nothing here can be saved (a POST is refused).
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or not selectors.template_in_use(template_id=obj.pk))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        return super().change_view(
            request, object_id, form_url, {"title": "View workflow template", **(extra_context or {})}
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: WorkflowTemplate | None = None,
    ) -> HttpResponse:
        # The graph and the declaration come from the row in hand; one query for the versions.
        if obj is not None:
            from .graph_view import graph_of

            graph = obj.graph if isinstance(obj.graph, dict) else {}
            versions, more = selectors.template_versions_list(name=obj.name)
            context.update(
                dagger_graph=graph_of(selectors.template_nodes(graph=graph, created_at=obj.created_at)),
                dagger_declaration=selectors.declaration_of(graph.get("parameters")),
                dagger_versions=[(v, _version_workflows(v)) for v in versions],
                dagger_versions_more=more,
                dagger_workflows_url=_changelist("workflow", template_name=obj.name),
                dagger_version_workflows_url=_version_workflows(obj),
                dagger_template_failure_policy=graph.get("failure_policy", ""),
            )
        context.update(show_save=False, show_save_and_continue=False, show_save_and_add_another=False)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """A template version's history is the workflows created from it: its ``history/`` URL
        (an old bookmark; the page shows no HISTORY button) opens their list."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        return HttpResponseRedirect(_version_workflows(obj))


def _version_workflows(template: WorkflowTemplate) -> str:
    """The admin list of the workflows created from ``template`` (this version only)."""
    return _changelist("workflow", template_name=template.name, template_version=template.version)


@admin.register(Timer)
class TimerAdmin(OperateActionsMixin, admin.ModelAdmin):
    list_display = ["id", "workflow", "purpose", "due_at", "status", "fired_at"]
    list_filter = ["status", "purpose"]
    actions = ["fire_now"]
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

    @admin.action(description="Fire selected pending timers now", permissions=["operate"])
    def fire_now(self, request: HttpRequest, queryset: QuerySet[Timer]) -> None:
        """Each timer fires in its workflow's transaction (``operations.timer_fire_now``), its
        node's history recording the user; a timer that has fired or was cancelled is reported."""
        from .engine.operations import timer_fire_now

        fired = 0
        for pk in queryset.order_by("due_at", "id").values_list("id", flat=True):
            try:
                timer_fire_now(timer_id=pk, actor=request.user.get_username())
                fired += 1
            except DaggerError as exc:
                self.message_user(request, f"Timer {pk}: {exc}", messages.WARNING)
        if fired:
            self.message_user(request, f"Fired {fired} timer(s).", messages.SUCCESS)


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
        "replayed_by",
        "replay_reason",
        "replayed_at",
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
                routed = message_replay(inbox_id=pk, actor=request.user.get_username())
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


@dataclass(frozen=True)
class NodeRow:
    """A row of the workflow page's node table: the node, and what an operator may do to it
    now (``"skip"``, ``"complete"``; empty without the operate permission)."""

    node: selectors.NodeInfo
    actions: tuple[str, ...] = ()


def node_rows(workflow: Workflow, nodes: list[selectors.NodeInfo], *, operate: bool) -> list[NodeRow]:
    """The node table's rows; the buttons follow ``operations.node_refusal`` (the engine's rule),
    so a button is shown where the operation would be accepted (the engine checks again)."""
    from .engine.operations import node_refusal

    if not operate or workflow.status not in (Status.EXECUTING, Status.FAILURE):
        return [NodeRow(node) for node in nodes]
    on_time = selectors.workflow_nodes_waiting_on_time(workflow_id=workflow.pk)
    rows = []
    for node in nodes:
        refused = node_refusal(
            node_type=node.node_type,
            kind=node.kind,
            status=node.status,
            waits_on_time=node.id in on_time,
            workflow_status=workflow.status,
            failure_policy=workflow.failure_policy,
        )
        actions: tuple[str, ...] = ()
        if refused is None:
            actions = ("skip",) if node.kind == NodeKind.DECISION else ("skip", "complete")
        rows.append(NodeRow(node, actions))
    return rows


#: A ``\\n`` escape in JSON text that is not itself an escaped backslash.
_ESCAPED_NEWLINE = re.compile(r"(?<!\\)((?:\\\\)*)\\n")


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON for a ``<pre>``, whole, with the newlines inside strings (a
    traceback) shown as line breaks rather than ``\\n``."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return _ESCAPED_NEWLINE.sub(lambda m: m.group(1) + "\n", text)


def since(delta: dt.timedelta) -> str:
    """The time between two events: milliseconds below a second, seconds below a minute."""
    ms = int(delta.total_seconds() * 1000)
    if ms < 1000:
        return f"+{max(ms, 0)} ms"
    if ms < 60_000:
        return f"+{ms / 1000:.3f} s"
    return "+" + human_duration(delta)


@dataclass(frozen=True)
class TimelineRow:
    """An event of the history as the workflow page shows it."""

    event: selectors.Event
    #: Local time to the millisecond, e.g. "2026-12-02 08:07:56.042".
    time: str
    #: The time since the event before ("+0 ms" for events of one transaction; "-" for the first).
    gap: str
    #: The detail as indented JSON, "" if none.
    detail: str
    #: Who did it, when a person did (the user name an admin action or API call recorded).
    actor: str = ""

    @property
    def node(self) -> str:
        """The node's own name (the last part of its dotted name); "" for the workflow."""
        return self.event.node_name.rsplit(".", 1)[-1]


def timeline(events: list[selectors.Event]) -> list[TimelineRow]:
    """The workflow page's history: each event with its time to the millisecond, the time since
    the event before and its detail as pretty JSON."""
    rows = []
    previous = None
    for event in events:
        rows.append(
            TimelineRow(
                event=event,
                time=exact_time(event.created_at),
                gap="-" if previous is None else since(event.created_at - previous),
                detail=pretty_json(event.detail) if event.detail else "",
                actor=str(event.detail.get("actor", "")) if isinstance(event.detail, dict) else "",
            )
        )
        previous = event.created_at
    return rows


def _text(data: bytes | memoryview | None, limit: int = 200) -> str:
    if data is None:
        return "(none)"
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(raw)} bytes, not UTF-8)"
    return text if len(text) <= limit else text[:limit] + "…"


def _changelist(model: str, **filters: Any) -> str:
    """The admin list of ``model`` with ``filters`` applied (query string parameters)."""
    return reverse(f"admin:dagger_django_{model}_changelist") + "?" + urlencode(filters)


def _inbox_url(inbox_id: int) -> str:
    return reverse("admin:dagger_django_inboxmessage_change", args=[inbox_id])


def exact_time(moment: dt.datetime) -> str:
    """Local time to the millisecond, e.g. "2026-12-02 08:07:56.042"."""
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d}"


def due_in(due_at: dt.datetime, now: dt.datetime) -> str:
    """When a timer is due, seen from ``now``: "in 3 min", "in 2 min 59 s", or "late by 2 s"
    once it is due; to the second below an hour (a timer is often minutes away)."""
    delta = due_at - now if due_at > now else now - due_at
    seconds = int(delta.total_seconds())
    if 60 <= seconds < 3600 and seconds % 60:
        text = f"{seconds // 60} min {seconds % 60} s"
    else:
        text = human_duration(delta)
    return f"in {text}" if due_at > now else f"late by {text}"


@dataclass(frozen=True)
class ParameterRow:
    """A runtime parameter on a workflow's page, with what its template declares of it."""

    name: str
    #: The value as indented JSON ("" when the parameter is declared but not set).
    value: str
    is_set: bool
    #: The template's declaration of it; None when undeclared (or the template declares nothing).
    declared: selectors.DeclaredParam | None
    #: The template declares parameters, and not this one (it came later, or extras are allowed).
    undeclared: bool


def parameter_rows(values: Any, declaration: selectors.Declaration | None) -> list[ParameterRow]:
    """The runtime parameters, declared ones first in their declared order (those not set
    too), then the others by name. Values are indented JSON for a ``<pre>`` (escaped there)."""
    given = values if isinstance(values, dict) else {}
    rows = []
    declared = declaration.params if declaration is not None else []
    for param in declared:
        is_set = param.name in given
        value = pretty_json(given[param.name]) if is_set else ""
        rows.append(ParameterRow(param.name, value, is_set, param, False))
    names = {p.name for p in declared}
    for name in sorted(set(given) - names, key=str):
        rows.append(ParameterRow(str(name), pretty_json(given[name]), True, None, declaration is not None))
    return rows


@dataclass(frozen=True)
class TimerRow:
    timer: selectors.TimerInfo
    now: dt.datetime
    #: Whether the user may fire it now (the operate permission, the workflow not ended).
    fire: bool = False

    @property
    def node(self) -> str:
        return self.timer.node_name.rsplit(".", 1)[-1] if self.timer.node_name else "(workflow)"

    @property
    def due_at(self) -> str:
        return exact_time(self.timer.due_at)

    @property
    def due(self) -> str:
        return due_in(self.timer.due_at, self.now)

    @property
    def late(self) -> bool:
        return self.timer.due_at <= self.now


@dataclass(frozen=True)
class ListenerRow:
    listener: selectors.ListenerInfo
    now: dt.datetime
    #: What the user may do to its node now: its row of the node table's actions.
    actions: tuple[str, ...] = ()

    @property
    def node(self) -> str:
        return self.listener.node_name.rsplit(".", 1)[-1] or str(self.listener.node_id)

    @property
    def since(self) -> str:
        return exact_time(self.listener.since)

    @property
    def waiting_for(self) -> str:
        return human_duration(self.now - self.listener.since)


@dataclass(frozen=True)
class MessageRow:
    message: selectors.MessageInfo
    #: The message's inbox page ("" when the user may not view the inbox).
    url: str
    #: Whether the user may replay it (a dead letter, the operate permission).
    replay: bool = False

    @property
    def received_at(self) -> str:
        return exact_time(self.message.received_at)

    @property
    def node(self) -> str:
        return self.message.node_name.rsplit(".", 1)[-1]

    @property
    def why(self) -> str:
        """The reason and the first line of the error or detail, e.g. "no_key: order_id missing"."""
        lines = (self.message.error or "").strip().splitlines()
        text = ": ".join(part for part in (self.message.reason, lines[0] if lines else "") if part)
        return text if len(text) <= 300 else text[:299] + "…"
