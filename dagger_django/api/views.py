"""The HTTP API: thin views over the engine's services.

Each view parses its input, makes one service call and maps the result; rules about workflows
live in :mod:`dagger_django.engine`. Reads go through :mod:`dagger_django.engine.selectors`,
which only read and bound their number of queries (a page of workflows: two; one workflow with
all its nodes: two): no view queries a table itself.
Every error is answered as ``{"error": <code>, "detail": <text>}`` (see :mod:`.errors`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connection
from django.urls import NoReverseMatch, reverse
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from ..definitions.registry import Dagger
from ..engine import operations, selectors, services
from ..exceptions import WorkflowDoesNotExist
from . import authentication, errors
from .permissions import (
    POST_EVENT,
    VIEW_WORKFLOW,
    CanOperateWorkflows,
    CanPostEvents,
    CanUseTheAPI,
    CanViewWorkflows,
    WorkflowAccess,
)
from .schema import describe
from .serializers import (
    EventOutSerializer,
    EventSerializer,
    MessageFilterSerializer,
    MessageSerializer,
    ReasonSerializer,
    ReplayAnswerSerializer,
    TemplateDetailSerializer,
    TemplateSerializer,
    WorkflowCreateSerializer,
    WorkflowDetailSerializer,
    WorkflowFilterSerializer,
    WorkflowListSerializer,
)

if TYPE_CHECKING:
    from ..models import Workflow

logger = logging.getLogger("dagger_django.api")


# ==================================================================================================
# plumbing
# ==================================================================================================
class DaggerJSONParser(JSONParser):
    """DRF's JSON parser, also refusing documents nested deeper than Python can decode."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the document is nested too deeply.") from exc


class WorkflowPagination(LimitOffsetPagination):
    """``limit``/``offset`` pages whose ``count`` stops counting at ``LIST_COUNT_LIMIT``.

    A full ``COUNT(*)`` grows with the table (41 ms at a million workflows, docs/benchmarks.md)
    and runs on every page. Here the count reads at most ``LIST_COUNT_LIMIT`` rows (or to the end
    of the requested page, if further): below that it is exact (``count_exact: true``); above, it
    is a lower bound (``count_exact: false``) and ``next`` is still given.
    """

    default_limit = 50
    max_limit = 500
    count_exact = True

    def get_count(self, queryset: Any) -> int:
        end_of_page = self.get_offset(self.request) + (self.limit or 0)
        counted, self.count_exact = selectors.workflows_count(workflows=queryset, at_least=end_of_page)
        return counted

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {
                "count": self.count,
                "count_exact": self.count_exact,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return _page_schema(schema)


class HistoryPagination(LimitOffsetPagination):
    """``limit``/``offset`` pages of a workflow's history, in the list's shape (``count_exact`` is
    always true: a workflow's history is read whole, in one query, and counted in memory)."""

    default_limit = 50
    max_limit = 500

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {
                "count": self.count,
                "count_exact": True,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return _page_schema(schema)


def _page_schema(schema: dict[str, Any]) -> dict[str, Any]:
    uri = {"type": "string", "format": "uri", "nullable": True}
    return {
        "type": "object",
        "required": ["count", "count_exact", "next", "previous", "results"],
        "properties": {
            "count": {"type": "integer"},
            "count_exact": {"type": "boolean"},
            "next": uri,
            "previous": uri,
            "results": schema,
        },
    }


class DaggerAPIView(APIView):
    """Base view of the API: JSON in and out, every error in the API's error shape.

    The mapping is installed here rather than in ``REST_FRAMEWORK["EXCEPTION_HANDLER"]`` because
    the settings belong to the project. DRF's own ``handle_exception`` still runs first, so a
    missing login is a 401 with ``WWW-Authenticate`` when the first authentication class offers
    a challenge (basic auth) and a 403 otherwise (session auth).

    Permissions: the project's ``DEFAULT_PERMISSION_CLASSES`` (``permission_classes``) and then
    the view's ``dagger_permission_classes`` (:mod:`.permissions`), all of which must allow the
    request. Composing keeps whatever the project asks more, and dagger's own checks hold even
    when the project's default is ``AllowAny``.
    """

    parser_classes = [DaggerJSONParser]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]
    #: drf-spectacular describes the views whatever the project's ``DEFAULT_SCHEMA_CLASS``.
    schema = AutoSchema()
    #: Checked after the project's permission classes; the strictest is the default.
    dagger_permission_classes: Sequence[type[BasePermission]] = (CanOperateWorkflows,)

    def get_permissions(self) -> list[BasePermission]:
        # The project's classes are read at request time: DRF copies them into
        # ``APIView.permission_classes`` once, when rest_framework.views is imported.
        project = api_settings.DEFAULT_PERMISSION_CLASSES
        return [permission() for permission in (*project, *self.dagger_permission_classes)]

    def perform_authentication(self, request: Request) -> None:
        authentication.perform_authentication(request)

    def get_exception_handler(self) -> Callable[..., Response | None]:
        return errors.exception_handler


def _detail_response(
    request: Request,
    workflow: Workflow,
    *,
    workflow_id: Any,
    http_status: int = status.HTTP_200_OK,
    **kwargs: Any,
) -> Response:
    """The detail of ``workflow`` (as a service returned it), read again with all its nodes."""
    context = {"request": request}
    try:
        return Response(
            WorkflowDetailSerializer(
                selectors.workflow_detail_get(workflow_id=workflow_id), context=context
            ).data,
            status=http_status,
            **kwargs,
        )
    except WorkflowDoesNotExist:
        # Deleted by the transition itself (DELETE_WORKFLOW_ON_COMPLETE): show what it became.
        data = dict(WorkflowDetailSerializer(selectors.workflow_detail_of(workflow), context=context).data)
        data["id"] = str(workflow_id)
        return Response(data, status=http_status, **kwargs)


# ==================================================================================================
# the root
# ==================================================================================================
#: What the root lists, in order: (key, route name, the permission that opens it; None: any).
ROOT_ENTRIES: tuple[tuple[str, str, str | None], ...] = (
    ("templates", "template-list", VIEW_WORKFLOW),
    ("workflows", "workflow-list", VIEW_WORKFLOW),
    ("messages", "message-list", VIEW_WORKFLOW),
    ("events", "events", POST_EVENT),
    ("health", "health", None),
    ("schema", "schema", None),
    ("docs", "docs", None),
    ("redoc", "redoc", None),
)


class ApiRootView(DaggerAPIView):
    """The endpoints of this API that you may use, by name, as absolute URLs. `docs` (Swagger
    UI) and `redoc` appear when the project serves them (docs/api.md#schema-and-pages)."""

    dagger_permission_classes = (CanUseTheAPI,)

    @describe(
        responses=inline_serializer(
            "ApiRoot", {key: serializers.URLField(required=False) for key, _, _ in ROOT_ENTRIES}
        )
    )
    def get(self, request: Request) -> Response:
        links: dict[str, str] = {}
        for key, route, permission in ROOT_ENTRIES:
            if permission is not None and not request.user.has_perm(permission):
                continue
            try:
                url = reverse(f"dagger_api:{route}")
            except NoReverseMatch:  # docs/redoc: not served by this project
                continue
            links[key] = request.build_absolute_uri(url)
        return Response(links)


# ==================================================================================================
# templates
# ==================================================================================================
class TemplateListView(DaggerAPIView):
    """Registered templates with the stored version of their current graph."""

    dagger_permission_classes = (CanViewWorkflows,)

    @describe(responses=TemplateSerializer(many=True))
    def get(self, request: Request) -> Response:
        templates: list[Any] = sorted(Dagger.template_dags.values(), key=lambda t: t.name)
        digests = {template.name: template.digest() for template in templates}
        versions = selectors.template_versions_get(digests=digests)
        rows = [
            {"name": name, "version": versions[name], "digest": digest} for name, digest in digests.items()
        ]
        return Response(TemplateSerializer(rows, many=True).data)


class TemplateDetailView(DaggerAPIView):
    """One registered template with its graph."""

    dagger_permission_classes = (CanViewWorkflows,)

    @describe(responses=TemplateDetailSerializer)
    def get(self, request: Request, name: str) -> Response:
        template: Any = Dagger.get_template(name)
        digest = template.digest()
        graph = template.to_graph()
        row = {
            "name": template.name,
            "version": selectors.template_versions_get(digests={template.name: digest})[template.name],
            "digest": digest,
            "parameters": graph.get("parameters"),
            "graph": graph,
        }
        return Response(TemplateDetailSerializer(row).data)


# ==================================================================================================
# workflows
# ==================================================================================================
class WorkflowListCreateView(DaggerAPIView):
    """`GET`: workflows, newest first, paginated. `POST`: create a workflow and submit it."""

    dagger_permission_classes = (WorkflowAccess,)

    pagination_class = WorkflowPagination

    @describe(
        description="Workflows, newest first, without parameters or tasks, filtered by the query "
        "parameters (empty values are ignored) and paginated with `limit` (default 50, at most 500) "
        "and `offset`. `count` is exact up to `LIST_COUNT_LIMIT` rows (`count_exact`).",
        parameters=[WorkflowFilterSerializer],
        responses=WorkflowListSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = WorkflowFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = selectors.workflow_list(**filters.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, request, view=self)
        rows = WorkflowListSerializer(page, many=True, context={"request": request}).data
        return paginator.get_paginated_response(rows)

    @describe(
        description="Create a workflow from a registered template and submit it: 201 with its detail "
        "and a `Location` header.",
        request=WorkflowCreateSerializer,
        responses={201: WorkflowDetailSerializer},
    )
    def post(self, request: Request) -> Response:
        body = WorkflowCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        workflow = services.workflow_create(
            template=Dagger.get_template(data["template"]),
            workflow_id=data["id"],
            partition_key_lookup=data["partition_key_lookup"],
            runtime_parameters=data["runtime_parameters"],
            submit=True,
        )
        location = request.build_absolute_uri(reverse("dagger_api:workflow-detail", args=[workflow.id]))
        return _detail_response(
            request,
            workflow,
            workflow_id=workflow.id,
            http_status=status.HTTP_201_CREATED,
            headers={"Location": location},
        )


class WorkflowDetailView(DaggerAPIView):
    """One workflow with every node."""

    dagger_permission_classes = (WorkflowAccess,)

    @describe(responses=WorkflowDetailSerializer)
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_detail_get(workflow_id=workflow_id)
        return Response(WorkflowDetailSerializer(workflow, context={"request": request}).data)


class WorkflowHistoryView(DaggerAPIView):
    """The history of one workflow, oldest first: every transition of it and of its nodes, with
    times in UTC to the millisecond. Paginated with `limit` (default 50, at most 500) and
    `offset`."""

    dagger_permission_classes = (CanViewWorkflows,)
    pagination_class = HistoryPagination

    @describe(responses=EventOutSerializer(many=True))
    def get(self, request: Request, workflow_id: str) -> Response:
        events = selectors.workflow_history_get(workflow_id=workflow_id)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(EventOutSerializer(page, many=True).data)


def _reason(request: Request) -> str:
    """The optional `{"reason": ...}` of an operator's action (an empty body: no reason)."""
    data = request.data
    body = ReasonSerializer(data={} if data is None or data == {} or data == b"" else data)
    body.is_valid(raise_exception=True)
    return str(body.validated_data["reason"])


def _actor(request: Request) -> str:
    return str(request.user.get_username())


class OperatorActionView(DaggerAPIView):
    """Base of an operator's action on one workflow (``operate_workflow``): ``POST`` with an
    optional ``{"reason": ...}``; the engine's :attr:`operation` runs with the URL's ids, the
    user's name as ``actor`` and the reason; the answer is the workflow, read again. A subclass
    names its operation and says in its docstring what it does (the schema's description)."""

    #: The engine's operation (``services`` or ``operations``), called with the URL's keyword
    #: arguments, ``actor`` and ``reason``; returns the workflow.
    operation: Callable[..., Workflow]

    @describe(request=ReasonSerializer, responses=WorkflowDetailSerializer)
    def post(self, request: Request, workflow_id: str, **ids: str) -> Response:
        workflow = self.operation(
            workflow_id=workflow_id, actor=_actor(request), reason=_reason(request), **ids
        )
        return _detail_response(request, workflow, workflow_id=workflow_id)


class WorkflowStopView(OperatorActionView):
    """Stop a workflow; 409 when it already ended. The history records who stopped it and the
    optional `reason`."""

    operation = staticmethod(services.workflow_stop)


class WorkflowRetryView(OperatorActionView):
    """Resume a FAILURE workflow from its failed tasks; 409 for any other status. The history
    records who retried it and the optional `reason`."""

    operation = staticmethod(services.workflow_retry)


class WorkflowResumeView(OperatorActionView):
    """Resume a STOPPED workflow where the stop left it (its stopped tasks run or wait again);
    409 for any other status, or while the stop's `stop` hooks have not run yet. The history
    records who resumed it and the optional `reason` (docs/api.md#operating)."""

    operation = staticmethod(operations.workflow_resume)


class NodeSkipView(OperatorActionView):
    """Skip a task that waits (a listener, a trigger or interval task waiting for its time, a
    task waiting for its retry) or failed: it ends SKIPPED and the workflow moves on. 409 for a
    task that runs, has finished or has not started; 404 for a node the workflow does not have."""

    operation = staticmethod(operations.node_skip)


class NodeCompleteView(OperatorActionView):
    """Complete a task that waits or failed as if it had succeeded (its code does not run); the
    next step is dispatched. 409 as for skip, and for a decision task."""

    operation = staticmethod(operations.node_complete)


class TimerFireView(OperatorActionView):
    """Fire a pending timer of the workflow now, before it is due (a trigger runs, an interval
    polls, a retry's wait ends). 409 when it has fired or was cancelled; 404 when the workflow
    has no such timer."""

    operation = staticmethod(operations.timer_fire_now)


class WorkflowParametersView(DaggerAPIView):
    """Merge the body (a JSON object) into the workflow's runtime parameters; listeners keyed
    on a changed parameter are re-keyed. `?reason=` is recorded with the user's name in the
    history. A STOPPED workflow's parameters may change (then resume it)."""

    @describe(
        request={"application/json": {"type": "object", "additionalProperties": True}},
        parameters=[
            OpenApiParameter(
                "reason", str, OpenApiParameter.QUERY, required=False, description="Why (optional)."
            )
        ],
        responses=WorkflowDetailSerializer,
    )
    def patch(self, request: Request, workflow_id: str) -> Response:
        reason = request.query_params.get("reason", "")
        if len(reason) > 1000:
            raise ValidationError({"reason": ["Ensure this field has no more than 1000 characters."]})
        workflow = services.workflow_update_parameters(
            workflow_id=workflow_id, changes=request.data, actor=_actor(request), reason=reason
        )
        return _detail_response(request, workflow, workflow_id=workflow_id)


# ==================================================================================================
# the inbox: dead letters and replay
# ==================================================================================================
class MessageListView(DaggerAPIView):
    """Received messages, newest first, paginated (`limit`, `offset`): `?status=dead` lists the
    dead letters (messages that could not be read), `unmatched` those no workflow waited for."""

    dagger_permission_classes = (CanViewWorkflows,)
    pagination_class = WorkflowPagination

    @describe(parameters=[MessageFilterSerializer], responses=MessageSerializer(many=True))
    def get(self, request: Request) -> Response:
        filters = MessageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = selectors.inbox_list(status=filters.validated_data.get("status"))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(MessageSerializer(page, many=True).data)


class MessageReplayView(DaggerAPIView):
    """Route a received message again (a dead letter once its producer is fixed, an unmatched
    or expired one once its workflow exists). Who replayed it and the optional `reason` are kept
    on the message and in the history of each workflow it reaches."""

    @describe(request=ReasonSerializer, responses=ReplayAnswerSerializer)
    def post(self, request: Request, inbox_id: str) -> Response:
        routed = operations.message_replay(inbox_id=inbox_id, actor=_actor(request), reason=_reason(request))
        answer: dict[str, Any] = {
            "status": routed.status,
            "matched": routed.matched,
            "message": routed.inbox_id,
        }
        if routed.reason:
            answer.update(reason=routed.reason, detail=routed.detail)
        return Response(answer)


# ==================================================================================================
# events (the Kafka issue: engine/messages.py)
# ==================================================================================================
class EventView(DaggerAPIView):
    """Route a message exactly as if it came from Kafka: 202 `{matched, status, message}`.

    `status` is `routed`, `unmatched`, `invalid` (a dead letter: `reason` and `detail` say why)
    or `duplicate` (this `message_id` was received before; nothing was done again). An unknown
    topic is a 404, a payload over `MAX_MESSAGE_BYTES` a 413.
    """

    dagger_permission_classes = (CanPostEvents,)

    @describe(
        request=EventSerializer,
        responses={
            202: inline_serializer(
                "EventAnswer",
                {
                    "matched": serializers.IntegerField(),
                    "status": serializers.ChoiceField(["routed", "unmatched", "invalid", "duplicate"]),
                    "message": serializers.IntegerField(allow_null=True),
                    "reason": serializers.CharField(required=False),
                    "detail": serializers.CharField(required=False),
                },
            )
        },
    )
    def post(self, request: Request) -> Response:
        from ..engine import messages

        body = EventSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        result = messages.message_receive(
            topic=data["topic"], payload=data["payload"], message_id=data["message_id"]
        )
        answer: dict[str, Any] = {
            "matched": result.matched,
            "status": result.status,
            "message": result.inbox_id,
        }
        if result.reason:
            answer.update(reason=result.reason, detail=result.detail)
        return Response(answer, status=status.HTTP_202_ACCEPTED)


# ==================================================================================================
# health
# ==================================================================================================
def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return True
    except DatabaseError as exc:
        logger.warning("health: database check failed: %r", exc)
        return False


_BROKER_TIMEOUT = 2.0


class _CheckCache:
    """The answers of the health checks that open network connections, kept for
    ``HEALTH_CACHE_SECONDS`` per configuration (the key), so that a probe every few hundred
    milliseconds, or a crowd of them, opens one broker connection and one Kafka admin client per
    window rather than one per request. A lock makes concurrent requests of an expired key wait
    for one check instead of each running their own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, check: Callable[[], Any]) -> Any:
        from ..conf import dagger_settings

        ttl = float(dagger_settings.HEALTH_CACHE_SECONDS)
        with self._lock:
            found = self._answers.get(key)
            if found is not None and time.monotonic() - found[0] < ttl:
                return found[1]
            answer = check()
            self._answers[key] = (time.monotonic(), answer)
            return answer

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()


#: The health view's cache of broker and bridge answers (``health_checks.clear()`` empties it).
health_checks = _CheckCache()


def _broker_ok() -> bool:
    from celery import current_app

    conf = current_app.conf
    return bool(health_checks.get(("broker", conf.broker_write_url or conf.broker_url), _broker_connect))


def _broker_connect() -> bool:
    from celery import current_app

    try:
        # Bounded everywhere: a broker that drops packets must not hang a readiness probe.
        with current_app.connection_for_write(
            connect_timeout=_BROKER_TIMEOUT, transport_options={"socket_connect_timeout": _BROKER_TIMEOUT}
        ) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0.2, interval_step=0.2, timeout=_BROKER_TIMEOUT
            )
        return True
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker means "not ready"
        logger.warning("health: broker check failed: %r", exc)
        return False


def _bridge_ok() -> bool | None:
    """Whether a Kafka bridge is running (None: no Kafka configured; see kafka/health.py)."""
    try:
        from ..kafka.health import bridge_alive
    except ImportError:  # confluent-kafka is not installed: Kafka is not used
        return None
    from ..conf import dagger_settings
    from ..kafka.config import client_config

    key = ("bridge", repr(sorted(client_config().items())), dagger_settings.KAFKA_GROUP_ID)
    answer: bool | None = health_checks.get(key, lambda: bridge_alive(timeout=_BROKER_TIMEOUT))
    return answer


_HEALTH = inline_serializer(
    "Health",
    {
        "status": serializers.ChoiceField(["ok", "degraded"]),
        "checks": serializers.DictField(child=serializers.BooleanField(allow_null=True)),
    },
)


class HealthView(DaggerAPIView):
    """Readiness: 200 when the database, the broker and (with Kafka configured) a bridge answer,
    503 otherwise. Open, reveals no data. `bridge` is null when no Kafka is configured.
    The broker and bridge answers are cached for `HEALTH_CACHE_SECONDS`; the database is
    asked every time (a query on a connection the process already holds). Not throttled: a
    cached answer costs little, and a probe answered 429 would take the service out of rotation.
    """

    authentication_classes: list[Any] = []
    throttle_classes: list[Any] = []

    def get_permissions(self) -> list[BasePermission]:
        return [AllowAny()]  # open whatever the project's defaults

    @describe(responses={200: _HEALTH, 503: _HEALTH}, auth=[])
    def get(self, request: Request) -> Response:
        checks: dict[str, bool | None] = {
            "database": _database_ok(),
            "broker": _broker_ok(),
            "bridge": _bridge_ok(),
        }
        healthy = all(value for value in checks.values() if value is not None)
        return Response(
            {"status": "ok" if healthy else "degraded", "checks": checks},
            status=status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Cache-Control": "no-store"},
        )


__all__ = [
    "ApiRootView",
    "DaggerAPIView",
    "EventView",
    "HealthView",
    "MessageListView",
    "MessageReplayView",
    "NodeCompleteView",
    "NodeSkipView",
    "TimerFireView",
    "WorkflowResumeView",
    "TemplateDetailView",
    "TemplateListView",
    "WorkflowDetailView",
    "WorkflowHistoryView",
    "WorkflowListCreateView",
    "WorkflowParametersView",
    "WorkflowRetryView",
    "WorkflowStopView",
]
