"""The errors users of dagger_django can act on.

Every error the library raises on purpose is a :class:`DaggerError`. The HTTP API maps each class
to one status code (``http_status``) and a stable machine-readable ``code``; the admin shows the
message as is. The first five names come from the original Dagger and keep their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class DaggerError(Exception):
    """Base class of every error raised on purpose by dagger_django."""

    code = "dagger_error"
    http_status = 400


class InvalidTaskType(DaggerError):
    """A builder was given a task class of the wrong family."""

    code = "invalid_task_type"


class TaskInvalidState(DaggerError):
    """An operation is not allowed in the current state (e.g. submit a COMPLETED workflow)."""

    code = "invalid_state"
    http_status = 409


class TemplateDoesNotExist(DaggerError):
    """No workflow template is registered under that name."""

    code = "template_not_found"
    http_status = 404


class InvalidTriggerTimeForTask(DaggerError):
    """A trigger or interval task's time, period or deadline is missing or invalid."""

    code = "invalid_trigger_time"


class InvalidTemplate(DaggerError):
    """A template definition is malformed: a cycle, a dangling reference, a missing setting."""

    code = "invalid_template"


class InvalidRuntimeParameters(DaggerError):
    """Runtime parameters are not a JSON object, cannot be stored as JSON, are too large, do not
    match the template's declared parameters, or lack the ``partition_key_lookup`` parameter.

    ``fields``, when set, names what is wrong in the API's shape, e.g.
    ``{"runtime_parameters": {"order_id": ["This parameter is required (str)."]}}`` or
    ``{"partition_key_lookup": ["..."]}``; the API adds it to its 400 body.
    """

    code = "invalid_runtime_parameters"

    def __init__(self, *args: object, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(*args)
        self.fields: Mapping[str, Any] | None = fields


class RuntimeParametersTooLarge(InvalidRuntimeParameters):
    code = "runtime_parameters_too_large"
    http_status = 413


class WorkflowDoesNotExist(DaggerError):
    code = "workflow_not_found"
    http_status = 404


class NodeDoesNotExist(DaggerError):
    """The workflow has no node (task) with that id."""

    code = "node_not_found"
    http_status = 404


class TimerDoesNotExist(DaggerError):
    """No timer with that id (in that workflow)."""

    code = "timer_not_found"
    http_status = 404


class MessageDoesNotExist(DaggerError):
    """No inbox message with that id (it may have been pruned)."""

    code = "message_not_found"
    http_status = 404


class TaskClassNotFound(DaggerError):
    """The class recorded for a running node cannot be imported any more (a deploy removed it)."""

    code = "task_class_not_found"


class InvalidTaskResult(DaggerError):
    """User code returned a value of the wrong type (e.g. a decision returning a foreign id)."""

    code = "invalid_task_result"


# -- messages (the Kafka issue) ---------------------------------------------------------------------
class UnknownTopic(DaggerError):
    """No registered listener template waits on this topic."""

    code = "unknown_topic"
    http_status = 404


class MessageTooLarge(DaggerError):
    """A message is larger than ``DAGGER['MAX_MESSAGE_BYTES']``."""

    code = "message_too_large"
    http_status = 413


class SyncCallInAsyncContext(DaggerError):
    """A synchronous engine call (``get_instance``) was made from async code; the message names
    the ``a``-twin to await instead (``aget_instance``)."""

    code = "sync_call_in_async_context"
    http_status = 500


class SchemaRegistryUnavailable(DaggerError):
    """``schema_registry_url`` is set but its client cannot be built (the ``avro`` extra is not
    installed, or Django is not set up)."""

    code = "schema_registry_unavailable"
    http_status = 500


class InvalidPayload(DaggerError):
    """A message payload the database cannot store (NUL, a lone surrogate, nested too deep)."""

    code = "invalid_payload"


__all__ = [
    "DaggerError",
    "SchemaRegistryUnavailable",
    "SyncCallInAsyncContext",
    "InvalidTaskType",
    "TaskInvalidState",
    "TemplateDoesNotExist",
    "InvalidTriggerTimeForTask",
    "InvalidTemplate",
    "InvalidRuntimeParameters",
    "RuntimeParametersTooLarge",
    "WorkflowDoesNotExist",
    "NodeDoesNotExist",
    "TimerDoesNotExist",
    "MessageDoesNotExist",
    "TaskClassNotFound",
    "InvalidTaskResult",
    "UnknownTopic",
    "MessageTooLarge",
    "InvalidPayload",
]
