"""Shapes of the API: what a request may carry and how templates and workflows are shown.

Input serializers check types and shapes only; every rule about workflows (sizes, states, what a
template needs) is the engine's, which raises a :class:`~dagger_django.exceptions.DaggerError`.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ..models import Status


class JSONObjectField(serializers.JSONField):
    """A JSON object (a dict with string keys); arrays, strings, numbers and null are refused."""

    default_error_messages = {"not_an_object": "Must be a JSON object, not {type}."}

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            self.fail("not_an_object", type=_json_type(data))
        return super().to_internal_value(data)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------------
class WorkflowCreateSerializer(serializers.Serializer):
    """Body of ``POST workflows/``."""

    template = serializers.CharField(max_length=200)
    runtime_parameters = JSONObjectField(required=False, default=dict)
    id = serializers.UUIDField(required=False, allow_null=True, default=None)
    partition_key_lookup = serializers.CharField(
        max_length=200, required=False, allow_null=True, allow_blank=False, default=None
    )


class EventSerializer(serializers.Serializer):
    """Body of ``POST events/``: a message for the listeners of ``topic`` (the Kafka issue)."""

    topic = serializers.CharField(max_length=255)
    payload = serializers.JSONField()
    message_id = serializers.CharField(max_length=200, required=False, allow_null=True, default=None)


class WorkflowFilterSerializer(serializers.Serializer):
    """Query string of ``GET workflows/``. An empty value means no filter."""

    status = serializers.ChoiceField(choices=Status.choices, required=False)
    template = serializers.CharField(max_length=200, required=False)
    key = serializers.CharField(max_length=255, required=False)

    def to_internal_value(self, data: Any) -> Any:
        # A query string gives lists; keep the last value of each known key and drop empty ones.
        values = {name: data.get(name) for name in self.fields if data.get(name) not in (None, "")}
        return super().to_internal_value(values)


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------
class TemplateSerializer(serializers.Serializer):
    """A registered template; ``version`` is null until a workflow was created from this graph."""

    name = serializers.CharField()
    version = serializers.IntegerField(allow_null=True)
    digest = serializers.CharField()


class TemplateDetailSerializer(TemplateSerializer):
    graph = serializers.JSONField()


class TaskSerializer(serializers.Serializer):
    """A node of a workflow: a process, a parallel group or a task."""

    id = serializers.UUIDField()
    name = serializers.CharField()
    type = serializers.CharField(source="node_type")
    kind = serializers.CharField()
    status = serializers.CharField()
    parent = serializers.UUIDField(source="parent_id", allow_null=True)
    attempts = serializers.IntegerField()
    error = serializers.CharField()
    time_submitted = serializers.DateTimeField(allow_null=True)
    time_completed = serializers.DateTimeField(allow_null=True)
    #: The ``stop`` hook of a task stopped while it ran: "pending" until a worker has called it,
    #: then "done" or "failed" (at ``stop_hook_at``); "" when there is none to run.
    stop_hook = serializers.CharField()
    stop_hook_at = serializers.DateTimeField(allow_null=True)


class WorkflowListSerializer(serializers.Serializer):
    """A row of the workflow list (no nodes, no parameters): :func:`~dagger_django.engine.selectors.workflow_list`."""

    id = serializers.UUIDField()
    template = serializers.CharField(source="template_name")
    version = serializers.IntegerField()
    status = serializers.CharField()
    business_key = serializers.CharField(allow_null=True)
    time_created = serializers.DateTimeField()
    time_completed = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


class WorkflowDetailSerializer(serializers.Serializer):
    """A workflow with every node, in position order: a
    :class:`~dagger_django.engine.selectors.WorkflowDetail`."""

    id = serializers.UUIDField()
    template = serializers.CharField(source="template_name")
    version = serializers.IntegerField()
    status = serializers.CharField()
    runtime_parameters = serializers.JSONField()
    business_key = serializers.CharField(allow_null=True)
    partition_key_lookup = serializers.CharField(allow_null=True)
    error = serializers.CharField()
    update_count = serializers.IntegerField()
    time_created = serializers.DateTimeField()
    time_submitted = serializers.DateTimeField(allow_null=True)
    time_completed = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()
    tasks = TaskSerializer(many=True)


__all__ = [
    "EventSerializer",
    "JSONObjectField",
    "TaskSerializer",
    "TemplateDetailSerializer",
    "TemplateSerializer",
    "WorkflowCreateSerializer",
    "WorkflowDetailSerializer",
    "WorkflowFilterSerializer",
    "WorkflowListSerializer",
]
