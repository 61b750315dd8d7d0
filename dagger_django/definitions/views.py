"""From rows back to the objects user code sees (see ``docs/internals.md``).

Duck-typed: a node or workflow is anything with the model's attribute names, so these functions
work on ORM rows, on in-memory fakes and on plain namespaces alike. Nothing here touches the
database.
"""

from __future__ import annotations

import datetime as dt
import importlib
import uuid
from collections.abc import Iterable
from typing import Any

from ..exceptions import TaskClassNotFound
from .enums import NodeKind, TaskOperator, TaskStatus
from .tasks import (
    FALLBACK_CLASSES,
    DefaultTemplateDAGInstance,
    ExecutorTask,
    ITask,
    ITemplateDAGInstance,
    task_kind,
)


def import_class(path: str) -> type:
    """Import a class from ``"package.module:QualName"`` (or ``"package.module.QualName"``).

    Raises ``TaskClassNotFound`` naming the path and the reason.
    """
    if not isinstance(path, str) or not path.strip():
        raise TaskClassNotFound(f"Cannot import class {path!r}: the path is empty")
    if ":" in path:
        module_name, _, qualname = path.partition(":")
    else:
        module_name, _, qualname = path.rpartition(".")
    if not module_name or not qualname:
        raise TaskClassNotFound(f"Cannot import class {path!r}: expected 'package.module:QualName'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure means the class is unavailable
        raise TaskClassNotFound(
            f"Cannot import class {path!r}: module {module_name!r} failed to import ({type(exc).__name__}: {exc})"
        ) from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise TaskClassNotFound(
                f"Cannot import class {path!r}: {module_name!r} has no attribute {qualname!r}"
            ) from exc
    if not isinstance(obj, type):
        raise TaskClassNotFound(f"Cannot import class {path!r}: it is a {type(obj).__name__}, not a class")
    return obj


def _uuid(value: Any) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(str(value))


def _epoch(value: Any) -> int:
    """Epoch seconds of an aware datetime (0 for None; ints pass through)."""
    if value is None:
        return 0
    if isinstance(value, dt.datetime):
        return int(value.timestamp())
    if isinstance(value, int | float):
        return int(value)
    return 0


def _resolve(
    path: str | None, *, want: type, fallback: type, strict: bool, what: str, kind: str | None = None
) -> type:
    try:
        cls = import_class(path or "")
    except TaskClassNotFound:
        if strict:
            raise
        return fallback
    problem = None
    if not issubclass(cls, want):
        problem = f"it is not a subclass of {want.__name__}"
    elif kind is not None and task_kind(cls) != kind:
        actual = task_kind(cls)
        problem = f"it is now a {actual.value if actual else 'non-task'} class but the {what} is a {kind}"
    if problem is None:
        return cls
    if strict:
        raise TaskClassNotFound(f"Cannot use class {path!r} for {what}: {problem}")
    return fallback


def build_task(node: Any, *, strict: bool = True) -> ITask[Any, Any]:
    """The task object for a node row: an instance of its ``task_class`` with the seed's fields.

    With ``strict=True`` a class that cannot be imported (or no longer matches the node's kind)
    raises ``TaskClassNotFound``; with ``strict=False`` the base class of the node's kind stands in
    (for display).
    """
    kind = str(getattr(node, "kind", "") or "")
    fallback = FALLBACK_CLASSES.get(kind, ExecutorTask)
    cls = _resolve(
        getattr(node, "task_class", None),
        want=ITask,
        fallback=fallback,
        strict=strict,
        what=f"node {getattr(node, 'name', None) or getattr(node, 'id', '?')}",
        kind=kind if kind in NodeKind._value2member_map_ else None,
    )
    config = dict(getattr(node, "config", None) or {})
    next_ids = [_uuid(i) for i in (getattr(node, "next_ids", None) or [])]
    child_ids = [_uuid(i) for i in (getattr(node, "child_ids", None) or [])]
    attempt = max(1, int(getattr(node, "attempts", 0) or 0))
    fields: dict[str, Any] = {
        "id": _uuid(node.id),
        "task_name": getattr(node, "name", None),
        "task_type": getattr(node, "node_type", None),
        "parent_id": _uuid(getattr(node, "parent_id", None)),
        "status": TaskStatus.of(getattr(node, "status", None) or "NOT_STARTED"),
        "time_created": _epoch(getattr(node, "time_created", None)),
        "time_submitted": _epoch(getattr(node, "time_submitted", None)),
        "time_completed": _epoch(getattr(node, "time_completed", None)),
        "next_dags": next_ids,
        "allow_skip_to": bool(config.get("allow_skip_to", False)),
        "reprocess_on_message": bool(config.get("reprocess_on_message", False)),
        "attempt": attempt,
    }
    if config.get("correlatable_key") is not None:
        fields["correlatable_key"] = config["correlatable_key"]
    if kind in (NodeKind.COMMAND, NodeKind.LISTENER):
        fields["topic"] = config.get("topic")
    if kind in (NodeKind.TRIGGER, NodeKind.INTERVAL, NodeKind.MONITOR):
        fields["time_to_execute"] = config.get("time_to_execute")
    if kind == NodeKind.INTERVAL:
        fields["time_to_force_complete"] = config.get("time_to_force_complete")
        fields["interval_execute_period"] = config.get("interval_execute_period")
    if kind == NodeKind.MONITOR:
        fields["monitored_task_id"] = _uuid(config.get("monitored_task_id"))
    if kind == NodeKind.PARALLEL:
        fields["parallel_child_task_list"] = child_ids
        fields["operator_type"] = config.get("operator") or TaskOperator.JOIN_ALL.value
        fields["process_name"] = config.get("template_name")
    if kind == NodeKind.PROCESS:
        fields["root_dag"] = child_ids[0] if child_ids else None
        fields["process_name"] = config.get("template_name")
        fields["max_run_duration"] = config.get("max_run_duration", 0) or 0
        fields["max_run_duration_monitor_task_id"] = _uuid(config.get("max_run_duration_monitor_task_id"))
        fields["monitoring_task_id"] = _uuid(config.get("monitoring_task_id"))
    known = cls._fields()[0]  # type: ignore[attr-defined]
    return cls(**{name: value for name, value in fields.items() if name in known})


class _LazyTasks(dict):  # type: ignore[type-arg]
    """A view's ``tasks`` that builds its task objects the first time anything reads or changes
    it, and is a plain dictionary from then on (:func:`build_workflow_view` with ``lazy``).

    Most hooks never look at the other tasks of their workflow, and building one task object per
    node for every hook run was a tenth of a worker's CPU per step. Every way to read or change a
    dictionary goes through a method here first (C code that copies a dictionary subclass, such
    as ``dict(tasks)``, ``{**tasks}`` or ``json.dumps``, calls ``keys``/``items`` when
    ``__iter__`` is overridden)."""

    __slots__ = ("_build",)

    def __init__(self, build: Any) -> None:
        super().__init__()
        self._build = build

    def _fill(self) -> None:
        build = getattr(self, "_build", None)  # a copy made by pickle or copy has none
        if build is not None:
            self._build = None
            for task in build():
                dict.__setitem__(self, task.id, task)


def _filled(name: str) -> Any:
    method = getattr(dict, name)

    def call(self: _LazyTasks, *args: Any, **kwargs: Any) -> Any:
        self._fill()
        return method(self, *args, **kwargs)

    call.__name__ = name
    return call


for _name in (
    "__getitem__",
    "__setitem__",
    "__delitem__",
    "__contains__",
    "__iter__",
    "__reversed__",
    "__len__",
    "__repr__",
    "__eq__",
    "__ne__",
    "__or__",
    "__ror__",
    "__ior__",
    "__reduce_ex__",
    "__sizeof__",
    "get",
    "keys",
    "values",
    "items",
    "copy",
    "pop",
    "popitem",
    "setdefault",
    "update",
    "clear",
):
    setattr(_LazyTasks, _name, _filled(_name))
_LazyTasks.__hash__ = None  # type: ignore[assignment]


def build_workflow_view(
    workflow: Any, nodes: Iterable[Any], *, strict: bool = False, lazy: bool = False
) -> ITemplateDAGInstance[Any, Any]:
    """The workflow as user code sees it: an instance of the template's ``template_type`` with
    ``id``, ``runtime_parameters`` (the row's dict itself, so hook changes are visible to the
    caller), ``tasks`` (every node, built with ``strict``), ``get_task(id)`` and ``status``.

    ``lazy``: the task objects are built when ``tasks`` is first used (the engine's view for a
    hook, which rarely looks at them); ``nodes`` must not change until then."""
    cls = _resolve(
        getattr(workflow, "template_class", None),
        want=ITemplateDAGInstance,
        fallback=DefaultTemplateDAGInstance,
        strict=strict,
        what=f"workflow {getattr(workflow, 'id', '?')}",
    )
    runtime_parameters = getattr(workflow, "runtime_parameters", None)
    if runtime_parameters is None:
        runtime_parameters = {}
    view = cls(
        id=_uuid(workflow.id),
        task_name=getattr(workflow, "template_name", None),
        template_name=getattr(workflow, "template_name", None),
        partition_key_lookup=getattr(workflow, "partition_key_lookup", None),
        status=TaskStatus.of(getattr(workflow, "status", None) or "NOT_STARTED"),
        runtime_parameters=runtime_parameters,
        update_count=int(getattr(workflow, "update_count", 0) or 0),
        time_created=_epoch(getattr(workflow, "time_created", None)),
        time_submitted=_epoch(getattr(workflow, "time_submitted", None)),
        time_completed=_epoch(getattr(workflow, "time_completed", None)),
        root_dag=_uuid(getattr(workflow, "root_node_id", None)),
    )
    if lazy and type(view).add_task is ITemplateDAGInstance.add_task:
        nodes = list(nodes)
        view.tasks = _LazyTasks(lambda: [build_task(node, strict=strict) for node in nodes])
        return view
    for node in nodes:
        view.add_task(build_task(node, strict=strict))
    return view


__all__ = ["build_task", "build_workflow_view", "import_class"]
