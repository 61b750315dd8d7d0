"""The original wf-dagger's web endpoints, for tooling written against it (docs/porting.md).

The original served three read-only endpoints from its Faust web server (port 6066):

- ``GET /service/ready``: ``{"is_ready": <bool>}``;
- ``GET /tasks/instance/{id}``: one stored workflow as plain JSON, 404 if unknown;
- ``GET /tasks/instances``: a JSON list of every stored workflow (the whole table).

Here they answer in the same shapes, read through :mod:`dagger_django.engine.selectors`, with
the API's authentication and read permission (``dagger_django.view_workflow``; ``service/ready``
is open, as the API's ``health/`` is). Differences, all documented in docs/porting.md:
``tasks/instances`` is paginated (``limit``, default 50, at most 500; ``offset``; the next and
previous pages in a ``Link`` header; the API list's filters), errors use the API's JSON error
shape, ``service/ready`` answers 503 when the database does not, and none of them is in the
API's OpenAPI schema (which describes ``/api/dagger/``).

The project mounts :mod:`dagger_django.api.compat_urls` at its root (``path("",
include("dagger_django.api.compat_urls"))``), so that the original's paths stay as they were.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.db import DatabaseError, connection
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from ..engine import selectors
from ..exceptions import WorkflowDoesNotExist
from ..models import NodeKind, NodeType
from .permissions import CanViewWorkflows
from .schema import describe
from .serializers import WorkflowFilterSerializer
from .views import DaggerAPIView

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

#: The original's task type of the workflow itself (its nodes keep their node type: SUB_DAG, LEAF, ...).
ROOT = "ROOT"


# ==================================================================================================
# the original's document of a workflow
# ==================================================================================================
def _epoch(value: dt.datetime | None) -> int:
    """The original's times: whole epoch seconds, 0 for "never"."""
    return int(value.timestamp()) if value is not None else 0


def _status(value: str) -> dict[str, str]:
    return {"code": value, "value": value}


def _ids(values: list[uuid.UUID]) -> list[str]:
    return [str(value) for value in values]


def _task(node: selectors.NodeInfo, settings: dict[str, Any], workflow_id: uuid.UUID) -> dict[str, Any]:
    """One node as the original's ``ITask`` record, with the fields of its kind."""
    parent = node.parent_id
    if parent is None and node.node_type == NodeType.SUB_DAG and node.kind == NodeKind.PROCESS:
        parent = workflow_id  # the original's processes name the workflow as their parent
    task: dict[str, Any] = {
        "id": str(node.id),
        "task_name": node.name,
        "task_type": node.node_type,
        "parent_id": None if parent is None else str(parent),
        "status": _status(node.status),
        "time_created": _epoch(node.time_created),
        "time_submitted": _epoch(node.time_submitted),
        "time_completed": _epoch(node.time_completed),
        "next_dags": _ids(node.next_ids),
        "root_dag": None,
        "message": None,
        "allow_skip_to": bool(settings.get("allow_skip_to", False)),
        "reprocess_on_message": bool(settings.get("reprocess_on_message", False)),
        "correlatable_key": settings.get("correlatable_key"),
    }
    if node.node_type == NodeType.PARALLEL_COMPOSITE:
        task["parallel_child_task_list"] = _ids(node.child_ids)
        task["operator_type"] = settings.get("operator")
        task["process_name"] = node.name.rsplit(".", 1)[-1]
    elif node.child_ids:
        task["root_dag"] = str(node.child_ids[0])
    if node.kind == NodeKind.PROCESS:
        task["process_name"] = node.name.rsplit(".", 1)[-1]
        task["max_run_duration"] = settings.get("max_run_duration") or 0
    elif node.kind in (NodeKind.COMMAND, NodeKind.LISTENER):
        task["topic"] = settings.get("topic")
    if node.kind in (NodeKind.TRIGGER, NodeKind.INTERVAL, NodeKind.MONITOR):
        task["time_to_execute"] = settings.get("time_to_execute")
    if node.kind == NodeKind.INTERVAL:
        task["time_to_force_complete"] = settings.get("time_to_force_complete")
        task["interval_execute_period"] = settings.get("interval_execute_period")
    if node.kind == NodeKind.MONITOR:
        task["monitored_task_id"] = settings.get("monitored_task_id")
    return task


def workflow_document(document: selectors.WorkflowDocument) -> dict[str, Any]:
    """A workflow as the original's ``ITemplateDAGInstance`` encoded to plain JSON: its own
    fields, ``tasks`` (every node by id), ``sensor_tasks_to_correletable_map`` (each listener's
    correlation parameter and its current value) and ``runtime_parameters``."""
    wf = document.detail
    tasks = {str(node.id): _task(node, document.settings.get(node.id, {}), wf.id) for node in wf.tasks}
    roots = [node for node in wf.tasks if node.parent_id is None and node.kind == NodeKind.PROCESS]
    listeners = {}
    for node in wf.tasks:
        key = document.settings.get(node.id, {}).get("correlatable_key")
        if node.kind == NodeKind.LISTENER and key:
            listeners[str(node.id)] = {
                "correlatable_key_attr": key,
                "correlatable_key_attr_value": wf.runtime_parameters.get(key),
            }
    return {
        "id": str(wf.id),
        "task_name": wf.template_name,
        "task_type": ROOT,
        "parent_id": None,
        "status": _status(wf.status),
        "time_created": _epoch(wf.time_created),
        "time_submitted": _epoch(wf.time_submitted),
        "time_completed": _epoch(wf.time_completed),
        "lastupdated": _epoch(wf.updated_at),
        "next_dags": [],
        "root_dag": str(roots[0].id) if roots else None,
        "message": None,
        "allow_skip_to": False,
        "reprocess_on_message": False,
        "correlatable_key": None,
        "template_name": wf.template_name,
        "partition_key_lookup": wf.partition_key_lookup,
        "runtime_parameters": wf.runtime_parameters,
        "update_count": wf.update_count,
        "sensor_tasks_to_correletable_map": listeners,
        "tasks": tasks,
    }


# ==================================================================================================
# views
# ==================================================================================================
class ServiceReadyView(DaggerAPIView):
    """The original's `GET /service/ready`: `{"is_ready": true}` when this process can serve
    (its database answers), else 503 with `{"is_ready": false}`. Open, like `health/`, which
    also checks the broker and the Kafka bridge."""

    authentication_classes: list[Any] = []
    throttle_classes: list[Any] = []

    def get_permissions(self) -> list[BasePermission]:
        return [AllowAny()]

    @describe(exclude=True)
    def get(self, request: Request) -> Response:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                ready = cursor.fetchone() is not None
        except DatabaseError:
            ready = False
        return Response(
            {"is_ready": ready},
            status=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Cache-Control": "no-store"},
        )


class TaskInstanceView(DaggerAPIView):
    """The original's `GET /tasks/instance/{id}`: one workflow with every node, in the
    original's plain JSON; 404 for an unknown id."""

    dagger_permission_classes = (CanViewWorkflows,)

    @describe(exclude=True)
    def get(self, request: Request, dag_id: str) -> Response:
        found = selectors.workflow_documents_get(workflow_ids=[dag_id])
        if not found:
            raise WorkflowDoesNotExist(f"No workflow with id {dag_id!r}.")
        return Response(workflow_document(found[0]))


class TaskInstancesView(DaggerAPIView):
    """The original's `GET /tasks/instances`: a JSON list of workflows (newest first), each
    whole as `tasks/instance/{id}` gives it. Paginated, unlike the original: `limit` (default
    50, at most 500) and `offset`; a `Link` header gives the `next` and `prev` pages. Takes the
    filters of the API's workflow list (`status`, `template`, `key`, ...)."""

    dagger_permission_classes = (CanViewWorkflows,)

    @describe(exclude=True)
    def get(self, request: Request) -> Response:
        limit = _bounded(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
        offset = _bounded(request, "offset", 0, low=0, high=2**31 - 1)
        filters = WorkflowFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        # One row more than the page says whether there is a next one, without counting.
        ids = list(
            selectors.workflow_list(**filters.validated_data).values_list("id", flat=True)[
                offset : offset + limit + 1
            ]
        )
        more = len(ids) > limit
        documents = selectors.workflow_documents_get(workflow_ids=ids[:limit])
        url = request.build_absolute_uri()
        links = []
        if more:
            links.append(f'<{replace_query_param(url, "offset", offset + limit)}>; rel="next"')
        if offset > 0:
            previous = max(offset - limit, 0)
            back = (
                replace_query_param(url, "offset", previous)
                if previous
                else remove_query_param(url, "offset")
            )
            links.append(f'<{back}>; rel="prev"')
        headers = {"Link": ", ".join(links)} if links else {}
        return Response([workflow_document(document) for document in documents], headers=headers)


def _bounded(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter: ``default`` when absent, a 400 when not an integer or below
    ``low``; at most ``high``."""
    raw = request.query_params.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise serializers.ValidationError(
            {name: [f"A whole number is required, not {raw[:40]!r}."]}
        ) from None
    if value < low:
        raise serializers.ValidationError({name: [f"Ensure this value is greater than or equal to {low}."]})
    return min(value, high)


__all__ = ["ServiceReadyView", "TaskInstanceView", "TaskInstancesView", "workflow_document"]
