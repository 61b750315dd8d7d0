"""Status, type and operator vocabularies shared by templates, task classes and the engine.

The three ``Enum`` classes keep the original's names and values (value == name). ``TaskStatus`` is
the small record the original stored on every node; ``NodeKind`` is new: it names the behaviour
family of a node row so the engine can dispatch on it without importing user classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, TypeAlias


class TaskStatusEnum(Enum):
    """Every state a workflow or one of its nodes can be in."""

    NOT_STARTED = "NOT_STARTED"
    SUBMITTED = "SUBMITTED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILURE = "FAILURE"
    SKIPPED = "SKIPPED"
    STOPPED = "STOPPED"


class TaskType(Enum):
    """Where a node sits in the tree: the workflow root, a process, a parallel group or a leaf task."""

    ROOT = "ROOT"
    LEAF = "LEAF"
    SUB_DAG = "SUB_DAG"
    PARALLEL_COMPOSITE = "PARALLEL_COMPOSITE"


class TaskOperator(Enum):
    """How a parallel group joins: when all children are terminal, or as soon as one is."""

    ATLEAST_ONE = "ATLEAST_ONE"
    JOIN_ALL = "JOIN_ALL"


class NodeKind(StrEnum):
    """The behaviour family of a node row (derived from its class when the workflow is created)."""

    PROCESS = "process"
    PARALLEL = "parallel"
    EXECUTOR = "executor"
    COMMAND = "command"
    LISTENER = "listener"
    DECISION = "decision"
    TRIGGER = "trigger"
    INTERVAL = "interval"
    MONITOR = "monitor"


#: Names of the statuses a node never leaves on its own.
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {
        TaskStatusEnum.COMPLETED.name,
        TaskStatusEnum.SKIPPED.name,
        TaskStatusEnum.FAILURE.name,
        TaskStatusEnum.STOPPED.name,
    }
)

#: Runtime parameter read by ``MonitoredProcessTemplateDAGInstance``: absolute epoch seconds.
COMPLETE_BY_KEY = "complete_by_time"

#: What a listener's key extractor returns: ``(runtime parameter name, value)``.
TaskLookupKey: TypeAlias = tuple[str, Any]


@dataclass(frozen=True, eq=False)
class TaskStatus:
    """The status record carried by every node: ``code`` is the status name, ``value`` its value.

    Two statuses are equal when their codes are; a status also compares equal to the matching
    :class:`TaskStatusEnum` member or name string, so ``task.status == TaskStatusEnum.COMPLETED``
    and ``task.status.code == "COMPLETED"`` both read naturally.
    """

    code: str
    value: str

    @classmethod
    def of(cls, status: TaskStatus | TaskStatusEnum | str) -> TaskStatus:
        """Normalise a ``TaskStatus``, a ``TaskStatusEnum`` member or a status name to a ``TaskStatus``."""
        if isinstance(status, TaskStatus):
            return status
        if isinstance(status, TaskStatusEnum):
            return cls(code=status.name, value=status.value)
        if isinstance(status, str):
            member = TaskStatusEnum.__members__.get(status.strip().upper())
            if member is not None:
                return cls(code=member.name, value=member.value)
        raise ValueError(f"{status!r} is not a task status (one of {', '.join(TaskStatusEnum.__members__)})")

    @property
    def enum(self) -> TaskStatusEnum:
        """The matching :class:`TaskStatusEnum` member."""
        return TaskStatusEnum[self.code]

    @property
    def is_terminal(self) -> bool:
        return self.code in TERMINAL_STATUSES

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TaskStatus):
            return self.code == other.code
        if isinstance(other, TaskStatusEnum):
            return self.code == other.name
        if isinstance(other, str):
            return self.code == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.code)

    def __str__(self) -> str:
        return self.code


__all__ = [
    "COMPLETE_BY_KEY",
    "NodeKind",
    "TERMINAL_STATUSES",
    "TaskLookupKey",
    "TaskOperator",
    "TaskStatus",
    "TaskStatusEnum",
    "TaskType",
]
