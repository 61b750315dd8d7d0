"""Shapes of the API: what a request may carry and how templates and workflows are shown.

Input serializers check types and shapes only; every rule about workflows (sizes, states, what a
template needs) is the engine's, which raises a :class:`~dagger_django.exceptions.DaggerError`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import Status

#: Ten years: a larger ``stuck_for`` would only overflow the date arithmetic.
MAX_STUCK_SECONDS = 10 * 366 * 24 * 3600


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
class ClosedSerializer(serializers.Serializer):
    """A body with only the declared fields: an unknown one (a typo such as
    `runtim_parameters`) is 400 `invalid` naming it, not silently dropped."""

    default_error_messages = {"unknown_field": "Unknown field; the fields are: {fields}."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = [name for name in data if name not in self.fields]
            if unknown:
                message = self.error_messages["unknown_field"].format(fields=", ".join(self.fields))
                raise serializers.ValidationError(
                    {_printable(name): [message] for name in unknown}, code="unknown_field"
                )
        return super().to_internal_value(data)


def _printable(name: str) -> str:
    """``name`` as it can be written back in UTF-8: a lone surrogate becomes its escape."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name


class WorkflowCreateSerializer(ClosedSerializer):
    """Body of `POST workflows/`. Any other field is refused (400 `invalid` naming it)."""

    template = serializers.CharField(max_length=200)
    runtime_parameters = JSONObjectField(
        required=False,
        default=dict,
        help_text="A JSON object; checked against the template's declared parameters, if it has any.",
    )
    id = serializers.UUIDField(required=False, allow_null=True, default=None)
    partition_key_lookup = serializers.CharField(
        max_length=200,
        required=False,
        allow_null=True,
        allow_blank=False,
        default=None,
        help_text="The runtime parameter whose value becomes the business key; it must be given.",
    )


class EventSerializer(serializers.Serializer):
    """Body of `POST events/`: a message for the listeners of `topic` (the Kafka issue)."""

    topic = serializers.CharField(max_length=255)
    payload = serializers.JSONField()
    message_id = serializers.CharField(max_length=200, required=False, allow_null=True, default=None)


class ReasonSerializer(ClosedSerializer):
    """Body of an operator's action (`resume`, `skip`, `complete`, `fire`, `replay`, `stop`,
    `retry`): an optional reason, recorded with the user's name in the workflow's history."""

    reason = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        default="",
        help_text="Why (optional): recorded in the history with who did it.",
    )


class MessageFilterSerializer(serializers.Serializer):
    """Query string of `GET messages/`."""

    status = serializers.ChoiceField(
        choices=["dead", "invalid", "unmatched", "expired", "routed", "buffered"],
        required=False,
        help_text="`dead` (or `invalid`): the dead letters; `unmatched`, `expired`, `routed`, `buffered`.",
    )

    def to_internal_value(self, data: Any) -> Any:
        values = {name: data.get(name) for name in self.fields if data.get(name) not in (None, "")}
        return super().to_internal_value(values)


class WorkflowFilterSerializer(serializers.Serializer):
    """Query string of `GET workflows/`. An empty value means no filter."""

    status = serializers.ChoiceField(choices=Status.choices, required=False, help_text="Exact status.")
    template = serializers.CharField(max_length=200, required=False, help_text="Exact template name.")
    version = serializers.IntegerField(
        min_value=1,
        max_value=2**31 - 1,
        required=False,
        help_text="Version of the template the workflows were created from (with `template`: of that one).",
    )
    key = serializers.CharField(
        max_length=255, required=False, help_text="Exact, case-sensitive business key."
    )
    id = serializers.UUIDField(required=False, help_text="Exact workflow id.")
    created_after = serializers.DateTimeField(
        required=False, help_text="Created at or after this time (ISO 8601; without an offset: UTC)."
    )
    created_before = serializers.DateTimeField(
        required=False, help_text="Created before this time (ISO 8601; without an offset: UTC)."
    )
    stuck_for = serializers.IntegerField(
        min_value=0,
        max_value=MAX_STUCK_SECONDS,
        required=False,
        help_text="Seconds: `EXECUTING` workflows in which nothing happened (no transition, no write "
        "of the workflow) for at least that long.",
    )

    def to_internal_value(self, data: Any) -> Any:
        # A query string gives lists; keep the last value of each known key and drop empty ones.
        values = {name: data.get(name) for name in self.fields if data.get(name) not in (None, "")}
        validated = super().to_internal_value(values)
        if "id" in validated:
            validated["workflow_id"] = validated.pop("id")
        return validated


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------
@extend_schema_field(OpenApiTypes.URI)
class WorkflowLinkField(serializers.Field):
    """The absolute URL of a route of a workflow (`route`: a name in `dagger_api`), built from
    its id without a query; relative when the serializer has no request in its context."""

    def __init__(self, route: str = "workflow-detail", **kwargs: Any) -> None:
        self.route = route
        kwargs.setdefault("source", "id")
        kwargs["read_only"] = True
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str:
        url = reverse(f"dagger_api:{self.route}", args=[value])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


class MillisecondDateTimeField(serializers.DateTimeField):
    """ISO 8601 in UTC to the millisecond: `2026-11-27T12:10:53.618Z`."""

    def to_representation(self, value: Any) -> str | None:
        if value is None:
            return None
        return str(value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))


class TemplateSerializer(serializers.Serializer):
    """A registered template; `version` is null until a workflow was created from this graph."""

    name = serializers.CharField()
    version = serializers.IntegerField(allow_null=True)
    digest = serializers.CharField()


class TemplateDetailSerializer(TemplateSerializer):
    parameters = serializers.JSONField(
        allow_null=True,
        help_text="The declared runtime parameters (`params`, `allow_extra`); null: any JSON object.",
    )
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
    """A row of the workflow list (no nodes, no parameters; read by `selectors.workflow_list`)."""

    id = serializers.UUIDField()
    url = WorkflowLinkField()
    template = serializers.CharField(source="template_name")
    version = serializers.IntegerField()
    status = serializers.CharField()
    business_key = serializers.CharField(allow_null=True)
    time_created = serializers.DateTimeField()
    time_completed = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


class WorkflowDetailSerializer(serializers.Serializer):
    """A workflow with every node, in position order (a `selectors.WorkflowDetail`)."""

    id = serializers.UUIDField()
    url = WorkflowLinkField()
    history = WorkflowLinkField("workflow-history")
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


class MessageSerializer(serializers.Serializer):
    """An inbox message (`GET messages/`): what was received and what became of it."""

    id = serializers.IntegerField()
    source = serializers.CharField()
    topic = serializers.CharField()
    message_id = serializers.CharField(allow_null=True)
    key = serializers.CharField(allow_null=True)
    payload = serializers.JSONField(allow_null=True)
    status = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    detail = serializers.CharField(allow_blank=True)
    matched = serializers.IntegerField()
    received_at = MillisecondDateTimeField()
    updated_at = MillisecondDateTimeField()
    replayed_by = serializers.CharField(allow_blank=True)
    replay_reason = serializers.CharField(allow_blank=True)
    replayed_at = MillisecondDateTimeField(allow_null=True)


class ReplayAnswerSerializer(serializers.Serializer):
    """What a replay did: the message's new `status` and how many listeners it reached."""

    status = serializers.ChoiceField(["routed", "unmatched", "invalid"])
    matched = serializers.IntegerField()
    message = serializers.IntegerField()
    reason = serializers.CharField(required=False)
    detail = serializers.CharField(required=False)


class EventOutSerializer(serializers.Serializer):
    """One transition of a workflow's history (a `selectors.Event`):
    of a node, or of the workflow itself (`node` null, `node_name` empty). `from_status`
    equal to `to_status` records something other than a status change (a parameter edit, a
    stop hook's outcome)."""

    time = MillisecondDateTimeField(source="created_at")
    node = serializers.UUIDField(source="node_id", allow_null=True)
    node_name = serializers.CharField()
    from_status = serializers.CharField()
    to_status = serializers.CharField()
    attempt = serializers.IntegerField()
    reason = serializers.CharField()
    detail = serializers.DictField(child=serializers.JSONField())


__all__ = [
    "EventOutSerializer",
    "EventSerializer",
    "MillisecondDateTimeField",
    "JSONObjectField",
    "MessageFilterSerializer",
    "MessageSerializer",
    "ReasonSerializer",
    "ReplayAnswerSerializer",
    "TaskSerializer",
    "TemplateDetailSerializer",
    "TemplateSerializer",
    "WorkflowCreateSerializer",
    "WorkflowDetailSerializer",
    "WorkflowFilterSerializer",
    "WorkflowLinkField",
    "WorkflowListSerializer",
]
