"""The task and instance classes users subclass, with the original's names, fields and hooks.

These are plain Python objects. The engine keeps every node's state in database rows and builds
one of these from a row (see :mod:`dagger_django.definitions.views`) only to call a user hook on it.
So the classes carry data and hooks, never engine behaviour: the original's ``start``,
``on_complete`` and ``notify`` raise here, because the engine owns every status change.

Hooks may be written as ``def`` or ``async def``; the engine awaits whatever is awaitable. The
base defaults that return a value return a :class:`HookResult`, which is both the value (for a
sync override calling ``super()``) and awaitable (for ``await super().execute(...)``).
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from . import engine_door
from .enums import (
    TERMINAL_STATUSES,
    NodeKind,
    TaskLookupKey,
    TaskOperator,
    TaskStatus,
    TaskStatusEnum,
    TaskType,
)
from .ids import as_workflow_id

KT = TypeVar("KT")
VT = TypeVar("VT")

_ENGINE_OWNS_STATE = (
    "{name}.{method}() is engine behaviour in dagger_django: node state lives in the database and only "
    "the engine changes it. Use Dagger.submit()/Dagger.stop(), set self.status inside execute(), or "
    "return the hook's result instead."
)


class HookResult:
    """A hook's return value that can also be awaited.

    The base classes' default hooks return one so that a user override works whether it is ``def``
    (``return super().interval_execute(p)``) or ``async def`` (``await super().execute(p, wf)``).
    Its truth value is the wrapped value's.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # pragma: no cover - makes this a generator, as __await__ must return an iterator

    def __bool__(self) -> bool:
        return bool(self.value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HookResult):
            return self.value == other.value
        return self.value == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HookResult({self.value!r})"


def resolve_hook_result(result: Any) -> Any:
    """Unwrap a :class:`HookResult`; any other value is returned as is (no event loop needed)."""
    return result.value if isinstance(result, HookResult) else result


class _PerInstance:
    """Marks a field whose default is a new container for every instance."""

    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def __repr__(self) -> str:
        return f"<new {getattr(self.factory, '__name__', 'value')} per instance>"


def _per_instance(factory: Callable[[], Any]) -> Any:
    return _PerInstance(factory)


_NOT_STARTED = TaskStatus.of(TaskStatusEnum.NOT_STARTED)


class ITask(Generic[KT, VT]):
    """Base of every node the engine can run: processes, parallel groups, tasks and the workflow root.

    Construct with keyword fields only (``ExecutorTask(id=..., task_name=...)``). A field that is
    not passed keeps its class-level default, so a subclass may set e.g. ``correlatable_key =
    "order_id"`` as a plain class attribute. Containers (``next_dags``, ``tasks``, ...) are new for
    every instance.

    Retry policy (read by the engine from the class): an exception raised by a hook is retried up
    to ``max_retries`` times, waiting ``retry_backoff`` seconds doubled per attempt (at most
    ``retry_backoff_max``), but only for exceptions that are instances of ``retry_on``.
    """

    max_retries: ClassVar[int] = 0
    retry_backoff: ClassVar[float] = 1.0
    retry_backoff_max: ClassVar[float] = 300.0
    retry_on: ClassVar[tuple[type[BaseException], ...]] = (Exception,)

    id: uuid.UUID | None = None
    task_name: str | None = None
    task_type: str = TaskType.LEAF.value
    parent_id: uuid.UUID | None = None
    time_created: int = 0
    time_submitted: int = 0
    time_completed: int = 0
    lastupdated: int = 0
    next_dags: list[uuid.UUID] = _per_instance(list)
    root_dag: uuid.UUID | None = None
    message: str | None = None
    allow_skip_to: bool = False
    reprocess_on_message: bool = False
    correlatable_key: str | None = None
    attempt: int = 1

    _status: TaskStatus = _NOT_STARTED
    _idempotency_key: str | None = None
    _field_cache: ClassVar[dict[type, tuple[frozenset[str], dict[str, _PerInstance]]]] = {}

    def __init__(self, **fields: Any) -> None:
        names, containers = type(self)._fields()
        for name, marker in containers.items():
            setattr(self, name, marker.factory())
        unknown = sorted(set(fields) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected field(s): {', '.join(unknown)}")
        for name, value in fields.items():
            setattr(self, name, value)

    @classmethod
    def _fields(cls) -> tuple[frozenset[str], dict[str, _PerInstance]]:
        """Field names (annotated, non-ClassVar, public) and per-instance container defaults."""
        cached = ITask._field_cache.get(cls)
        if cached is not None:
            return cached
        names: set[str] = {"status", "idempotency_key"}
        containers: dict[str, _PerInstance] = {}
        for klass in reversed(cls.__mro__):
            annotations = klass.__dict__.get("__annotations__", {})
            for name, annotation in annotations.items():
                if name.startswith("_") or "ClassVar" in str(annotation):
                    continue
                names.add(name)
            for name, value in klass.__dict__.items():
                if isinstance(value, _PerInstance):
                    containers[name] = value
                    names.add(name)
                elif name in containers:
                    # A subclass replaced the container default with a plain value.
                    del containers[name]
        result = (frozenset(names), containers)
        ITask._field_cache[cls] = result
        return result

    # -- status and identity -------------------------------------------------------------------
    @property
    def status(self) -> TaskStatus:
        """The node's status; assigning a ``TaskStatusEnum`` or a name stores a ``TaskStatus``."""
        return self._status

    @status.setter
    def status(self, value: TaskStatus | TaskStatusEnum | str) -> None:
        self._status = TaskStatus.of(value)

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of the same attempt: ``"<id>:<attempt>"``."""
        if self._idempotency_key is not None:
            return self._idempotency_key
        return f"{self.id}:{self.attempt}"

    @idempotency_key.setter
    def idempotency_key(self, value: str | None) -> None:
        self._idempotency_key = value

    def get_id(self) -> uuid.UUID | None:
        return self.id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id} name={self.task_name!r} status={self.status.code}>"

    # -- user hooks ----------------------------------------------------------------------------
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        """Do the task's work. Set ``self.status = TaskStatusEnum.FAILURE`` to fail it."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute()")

    def stop(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        """Called when the workflow is stopped while this node was EXECUTING. Default: nothing."""
        return HookResult(None)

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        """Handle a correlated message; return True when the task is done."""
        raise NotImplementedError(f"{type(self).__name__} does not handle messages")

    def evaluate(self, **kwargs: Any) -> Any:
        """Choose the next node id (decisions only)."""
        raise NotImplementedError(f"{type(self).__name__} does not evaluate")

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        """Deprecated in the original: return ``(key name, value)`` for a payload."""
        raise NotImplementedError(f"{type(self).__name__} does not correlate messages")

    async def get_correlatable_key_from_payload(self, payload: Any) -> TaskLookupKey:
        """Async wrapper around :meth:`get_correlatable_key` (which may itself be async)."""
        result: Any = self.get_correlatable_key(payload)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def get_correlatable_keys_from_payload(self, payload: Any) -> list[TaskLookupKey]:
        """All ``(key name, value)`` pairs a payload addresses; default: the single one, in a list."""
        result: Any = self.get_correlatable_key_from_payload(payload)
        if inspect.isawaitable(result):
            result = await result
        return [result]

    # -- the original's engine methods: not available here ---------------------------------------
    def start(self, workflow_instance: Any = None, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(_ENGINE_OWNS_STATE.format(name=type(self).__name__, method="start"))

    def on_complete(
        self, workflow_instance: Any = None, status: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        raise NotImplementedError(_ENGINE_OWNS_STATE.format(name=type(self).__name__, method="on_complete"))

    def notify(self, status: Any = None, workflow_instance: Any = None) -> Any:
        raise NotImplementedError(_ENGINE_OWNS_STATE.format(name=type(self).__name__, method="notify"))

    async def get_remaining_tasks(
        self,
        next_dag_id: uuid.UUID | None,
        workflow_instance: Any,
        tasks: list[ITask[Any, Any]] | None = None,
        end_task_id: uuid.UUID | None = None,
    ) -> list[ITask[Any, Any]] | None:
        """Read-only walk of a workflow view, in the original's order (children, node, successors).

        It only reads ``workflow_instance.tasks``; it changes nothing. Returns None when ``tasks``
        is None, as the original did.
        """
        if tasks is None:
            return None
        _walk_remaining(next_dag_id, workflow_instance, tasks, end_task_id)
        return tasks


def _walk_remaining(
    node_id: uuid.UUID | None, workflow: Any, out: list[ITask[Any, Any]], end: uuid.UUID | None
) -> bool:
    """Append nodes depth first; return True once ``end`` was appended (stop everything)."""
    node = workflow.get_task(node_id) if node_id is not None else None
    if node is None:
        return False
    if node.root_dag is not None and _walk_remaining(node.root_dag, workflow, out, end):
        return True
    out.append(node)
    if end is not None and node.id == end:
        return True
    for successor in node.next_dags:
        if _walk_remaining(successor, workflow, out, end):
            return True
    return False


class ExecutorTask(ITask[KT, VT]):
    """A task that runs ``execute`` and completes."""

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ExecutorTask does not handle messages")

    def evaluate(self, **kwargs: Any) -> Any:
        raise NotImplementedError("ExecutorTask does not evaluate")


class KafkaCommandTask(ExecutorTask[KT, VT]):
    """An executor bound to a topic; its ``execute`` sends the command, e.g. via
    ``Dagger.topics[self.topic].send(...)``. The engine sends nothing by itself."""

    topic: str | None = None


class SensorTask(ITask[KT, VT]):
    """A task that waits until a message completes it (``on_message`` returns True)."""

    match_only_one: bool = False

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        raise NotImplementedError("a SensorTask waits for messages; it does not execute")

    def evaluate(self, **kwargs: Any) -> Any:
        raise NotImplementedError("a SensorTask does not evaluate")


class KafkaListenerTask(SensorTask[KT, VT]):
    """Waits for a message on ``topic`` whose correlation value matches this workflow's
    ``runtime_parameters[correlatable_key]`` (declare ``correlatable_key`` on the subclass)."""

    topic: str | None = None
    correlatable_key: str | None = None

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        """Default: the payload itself is the ``(key name, value)`` pair."""
        return payload


class TriggerTask(ExecutorTask[KT, VT]):
    """Runs ``execute`` once the wall clock reaches ``time_to_execute`` (epoch seconds)."""

    time_to_execute: int | None = None


class IntervalTask(TriggerTask[KT, VT]):
    """Polls ``interval_execute`` every ``interval_execute_period`` seconds from ``time_to_execute``
    until it returns True or ``time_to_force_complete`` passes, then runs ``execute``."""

    time_to_force_complete: int | None = None
    interval_execute_period: int | float | None = None

    def interval_execute(self, runtime_parameters: dict[str, Any]) -> Any:
        """One poll; return True to finish. Default: True (finish at the first poll)."""
        return HookResult(True)


class MonitoringTask(TriggerTask[KT, VT]):
    """A timer on another node: at ``time_to_execute`` the engine calls
    ``process_monitored_task`` if the monitored node is still unfinished."""

    monitored_task_id: uuid.UUID | None = None

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        return HookResult(None)

    def process_monitored_task(self, monitored_task: ITask[Any, Any], workflow_instance: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement process_monitored_task()")


class DefaultMonitoringTask(MonitoringTask[str, str]):
    """Ready-made monitor: the engine calls ``process_monitored_task`` (default: nothing) when the
    monitored node is not COMPLETED, SKIPPED or FAILURE at the due time. Subclass and override it."""

    def process_monitored_task(self, monitored_task: ITask[Any, Any], workflow_instance: Any) -> Any:
        return HookResult(None)


class SkipOnMaxDurationTask(DefaultMonitoringTask):
    """The monitor behind a process's ``max_run_duration``. The engine recognises it and skips the
    process's unfinished nodes and the process itself; the hook does nothing by design."""


class IMonitoredTask:
    """Interface of nodes that carry a monitor (see ``MonitoredProcessTemplateDAGInstance``)."""

    def get_monitoring_task_type(self) -> type[MonitoringTask[Any, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_monitoring_task_type()")

    def setup_monitoring_task(self, workflow_instance: Any) -> Any:
        raise NotImplementedError(
            _ENGINE_OWNS_STATE.format(name=type(self).__name__, method="setup_monitoring_task")
        )


class DecisionTask(ITask[KT, VT]):
    """Chooses which successor runs: ``evaluate(**runtime_parameters)`` returns one id of
    ``self.next_dags`` (the others are SKIPPED) or None (no branch: the chain ends here).

    The original's default ``evaluate`` picked at random (None half of the time); that default is a
    trap, so here it raises ``NotImplementedError``: every decision must say what it decides.
    """

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        raise NotImplementedError("a DecisionTask evaluates; it does not execute")

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a DecisionTask does not handle messages")

    def evaluate(self, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(**runtime_parameters)")


class SystemTask(ExecutorTask[str, str]):
    """Internal bookkeeping task of the original; kept for import compatibility, never stored."""

    def evaluate(self, **kwargs: Any) -> Any:
        raise NotImplementedError("SystemTask does not evaluate")

    def on_message(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("SystemTask does not handle messages")

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        raise NotImplementedError("SystemTask does not correlate messages")


class SystemTimerTask(SystemTask):
    """The original's timer tick. Here celery-beat drives timers; ``execute`` does nothing."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        return HookResult(None)


class INonLeafNodeTask(ITask[KT, VT]):
    """Base of nodes with children (processes and the workflow root). ``execute`` runs when the
    node starts, before its first child; default: nothing."""

    task_type: str = TaskType.SUB_DAG.value

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        return HookResult(None)

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not handle messages")

    def evaluate(self, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not evaluate")


class ParallelCompositeTask(ITask[KT, VT]):
    """A parallel group: starts every child in ``parallel_child_task_list`` and completes when all
    (``JOIN_ALL``) or one (``ATLEAST_ONE``) of them is terminal, per ``operator_type``."""

    task_type: str = TaskType.PARALLEL_COMPOSITE.value
    parallel_child_task_list: list[uuid.UUID] = _per_instance(list)
    operator_type: str = TaskOperator.JOIN_ALL.value
    process_name: str | None = None

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        return HookResult(None)

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ParallelCompositeTask does not handle messages")

    def evaluate(self, **kwargs: Any) -> Any:
        raise NotImplementedError("ParallelCompositeTask does not evaluate")


class IProcessTemplateDAGInstance(INonLeafNodeTask[KT, VT]):
    """A process: a chain of tasks inside a workflow."""

    process_name: str | None = None
    max_run_duration_monitor_task_id: uuid.UUID | None = None
    max_run_duration: int = 0


class DefaultProcessTemplateDAGInstance(IProcessTemplateDAGInstance[str, str]):
    """The default process class. With ``max_run_duration`` > 0 the engine times it out: its
    unfinished nodes and itself become SKIPPED and the next process starts."""

    def setup_max_run_duration(self, workflow_instance: Any) -> Any:
        raise NotImplementedError(
            _ENGINE_OWNS_STATE.format(name=type(self).__name__, method="setup_max_run_duration")
        )


class MonitoredProcessTemplateDAGInstance(DefaultProcessTemplateDAGInstance, IMonitoredTask):
    """A process watched by a monitor: when it starts and the runtime parameter
    ``complete_by_time`` is set, the engine schedules ``get_monitoring_task_type()`` for that time."""

    monitoring_task_id: uuid.UUID | None = None

    def get_monitoring_task_type(self) -> type[MonitoringTask[Any, Any]]:
        return DefaultMonitoringTask


class ITemplateDAGInstance(INonLeafNodeTask[KT, VT]):
    """The workflow as user code sees it: ``runtime_parameters`` (the shared dict every hook
    receives), ``tasks`` (every node by id) and ``status``.

    ``failure_policy`` decides what a task failure (after its retries) does: ``"halt"`` (the
    workflow ends FAILURE and can be retried from the failed node) or ``"continue"`` (the chain
    goes on, as in the original). A template can override it with ``set_failure_policy``.
    """

    failure_policy: ClassVar[str] = "halt"

    task_type: str = TaskType.ROOT.value
    template_name: str | None = None
    partition_key_lookup: str | None = None
    tasks: dict[uuid.UUID, ITask[Any, Any]] = _per_instance(dict)
    sensor_tasks_to_correletable_map: dict[uuid.UUID, CorrelatableMapValue] = _per_instance(dict)
    runtime_parameters: dict[str, Any] = _per_instance(dict)
    update_count: int = 0

    async def stop(
        self, runtime_parameters: dict[str, Any] | None = None, workflow_instance: Any = None
    ) -> Any:  # type: ignore[override]
        """Stop this workflow, as the original's ``await instance.stop(runtime_parameters=...,
        workflow_instance=instance)`` did: ``Dagger.astop`` on its id. Both arguments are accepted
        for compatibility and unused (the stored workflow is what is stopped). This view is
        refreshed (``status``, ``runtime_parameters``, ``tasks``) and the stopped workflow is
        returned as ``get_instance`` returns it. Sync code calls ``Dagger.stop(instance)``.

        Not a hook: the engine never calls a workflow's ``stop`` (tasks' and processes' ``stop``
        hooks are what a stop runs).
        """
        from asgiref.sync import sync_to_async

        stopped = await sync_to_async(engine_door.stop_workflow)(workflow_id=as_workflow_id(self.id))
        for name in ("status", "runtime_parameters", "tasks", "model"):
            if hasattr(stopped, name):
                setattr(self, name, getattr(stopped, name))
        return stopped

    def add_task(self, task: ITask[Any, Any]) -> None:
        """Add a node to this view's ``tasks`` (the view only; nothing is stored)."""
        self.tasks[task.id] = task  # type: ignore[index]

    def get_task(self, id: uuid.UUID | str | None) -> ITask[Any, Any] | None:
        """The node with this id, the workflow itself for its own id, None for None or unknown ids."""
        if id is None:
            return None
        if not isinstance(id, uuid.UUID):
            try:
                id = uuid.UUID(str(id))
            except ValueError:
                return None
        if id == self.id:
            return self
        return self.tasks.get(id)

    @property
    def is_terminal(self) -> bool:
        return self.status.code in TERMINAL_STATUSES


class DefaultTemplateDAGInstance(ITemplateDAGInstance[str, str]):
    """The default workflow class."""


class TaskDTO(ITask[str, str]):
    """A node with its child nodes attached (a transfer object; unused by the engine)."""

    child_tasks: list[ITask[Any, Any]] = _per_instance(list)


@dataclass
class CorrelatableMapValue:
    """Which runtime parameter a listener correlates on and the value it is registered under."""

    correlatable_key_attr: str | None = None
    correlatable_key_attr_value: str | None = None


@dataclass
class Trigger:
    """A task's due time (epoch seconds), keyed by ``(workflow_id, id)``."""

    trigger_time: int | None = None
    id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None

    def get_trigger_key(self) -> tuple[uuid.UUID | None, uuid.UUID | None]:
        return (self.workflow_id, self.id)


# -- class families -------------------------------------------------------------------------------
def class_path(cls: type) -> str:
    """``"package.module:QualName"``: how node rows reference their class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def task_kind(cls: type) -> NodeKind | None:
    """The :class:`NodeKind` of a task/instance class, or None when it is not a node class.

    Order matters: monitor and interval are checked before trigger, every specific family before
    executor.
    """
    if not isinstance(cls, type) or not issubclass(cls, ITask) or issubclass(cls, ITemplateDAGInstance):
        return None
    if issubclass(cls, ParallelCompositeTask):
        return NodeKind.PARALLEL
    if issubclass(cls, INonLeafNodeTask):
        return NodeKind.PROCESS
    if issubclass(cls, KafkaCommandTask):
        return NodeKind.COMMAND
    if issubclass(cls, SensorTask):
        return NodeKind.LISTENER
    if issubclass(cls, DecisionTask):
        return NodeKind.DECISION
    if issubclass(cls, MonitoringTask):
        return NodeKind.MONITOR
    if issubclass(cls, IntervalTask):
        return NodeKind.INTERVAL
    if issubclass(cls, TriggerTask):
        return NodeKind.TRIGGER
    return NodeKind.EXECUTOR


#: The class that stands in for a node whose own class cannot be imported (display only).
FALLBACK_CLASSES: dict[str, type[ITask[Any, Any]]] = {
    NodeKind.PROCESS: DefaultProcessTemplateDAGInstance,
    NodeKind.PARALLEL: ParallelCompositeTask,
    NodeKind.EXECUTOR: ExecutorTask,
    NodeKind.COMMAND: KafkaCommandTask,
    NodeKind.LISTENER: KafkaListenerTask,
    NodeKind.DECISION: DecisionTask,
    NodeKind.TRIGGER: TriggerTask,
    NodeKind.INTERVAL: IntervalTask,
    NodeKind.MONITOR: DefaultMonitoringTask,
}


__all__ = [
    "KT",
    "VT",
    "CorrelatableMapValue",
    "DecisionTask",
    "DefaultMonitoringTask",
    "DefaultProcessTemplateDAGInstance",
    "DefaultTemplateDAGInstance",
    "ExecutorTask",
    "HookResult",
    "IMonitoredTask",
    "INonLeafNodeTask",
    "IProcessTemplateDAGInstance",
    "ITask",
    "ITemplateDAGInstance",
    "IntervalTask",
    "KafkaCommandTask",
    "KafkaListenerTask",
    "MonitoredProcessTemplateDAGInstance",
    "MonitoringTask",
    "ParallelCompositeTask",
    "SensorTask",
    "SkipOnMaxDurationTask",
    "SystemTask",
    "SystemTimerTask",
    "TaskDTO",
    "Trigger",
    "TriggerTask",
    "class_path",
    "resolve_hook_result",
    "task_kind",
]
