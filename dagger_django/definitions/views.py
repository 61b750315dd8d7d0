"""From rows back to the objects user code sees (see ``docs/internals.md``).

Duck-typed: a node or workflow is anything with the model's attribute names, so these functions
work on ORM rows, on in-memory fakes and on plain namespaces alike. Nothing here touches the
database.
"""

from __future__ import annotations

import datetime as dt
import importlib
import sys
import uuid
from collections.abc import Iterable, Iterator
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


#: Resolved classes by (path, want, kind): the class, the module it was found in and its path. A
#: hit is used only while that module object is still the one in ``sys.modules`` and the name
#: still refers to the class (:func:`_still`); failures are never cached.
_RESOLVED: dict[tuple[str, type, str | None], tuple[type, Any, str, str]] = {}


def _split(path: str) -> tuple[str, str]:
    """``(module name, qualified name)`` of a class path, as :func:`import_class` reads it."""
    if ":" in path:
        module_name, _, qualname = path.partition(":")
    else:
        module_name, _, qualname = path.rpartition(".")
    return module_name, qualname


def _still(hit: tuple[type, Any, str, str]) -> bool:
    """Whether a cached class is still what its path names: the path's module is the object
    imported then, and the name in it still refers to the class (a test may swap in a fake)."""
    cls, module, module_name, qualname = hit
    if module is None or sys.modules.get(module_name) is not module:
        return False
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def _resolve(
    path: str | None, *, want: type, fallback: type, strict: bool, what: str, kind: str | None = None
) -> type:
    key = (path or "", want, kind)
    hit = _RESOLVED.get(key)
    if hit is not None and _still(hit):
        return hit[0]
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
        module_name, qualname = _split(path or "")
        _RESOLVED[key] = (cls, sys.modules.get(module_name), module_name, qualname)
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


def build_workflow_view(
    workflow: Any, nodes: Iterable[Any], *, strict: bool = False
) -> ITemplateDAGInstance[Any, Any]:
    """The workflow as user code sees it: an instance of the template's ``template_type`` with
    ``id``, ``runtime_parameters`` (the row's dict itself, so hook changes are visible to the
    caller), ``tasks`` (every node, built with ``strict``), ``get_task(id)`` and ``status``."""
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
    view.tasks = _LazyTasks(nodes, strict=strict)
    return view


class _NodeSnapshot:
    """The fields of a node a task object is built from, as they were when the view was made
    (the engine goes on changing its nodes in the same transaction, after the view is built)."""

    __slots__ = _SNAPSHOT_FIELDS = (
        "id",
        "name",
        "node_type",
        "kind",
        "task_class",
        "parent_id",
        "status",
        "config",
        "next_ids",
        "child_ids",
        "attempts",
        "time_created",
        "time_submitted",
        "time_completed",
    )

    def __init__(self, node: Any) -> None:
        for name in self._SNAPSHOT_FIELDS:
            setattr(self, name, getattr(node, name, None))


class _LazyTasks(dict):  # type: ignore[type-arg]
    """A view's ``tasks``: a dict of task objects by node id, each built on first use.

    Building every node's task object for every step cost more than any hook in a short
    workflow needs (most read none, or one through ``get_task``): a key looked up builds that
    task alone, anything that sees the whole dict (iterating, ``len``, ``values``, comparing,
    copying) builds the rest first, in node order. Node fields are copied when the view is made,
    so a task built later shows the node as it was then. Writes behave as on a plain dict.
    """

    __slots__ = ("_pending", "_strict")

    def __init__(self, nodes: Iterable[Any], *, strict: bool) -> None:
        super().__init__()
        self._strict = strict
        self._pending: dict[Any, _NodeSnapshot] | None = {}
        for node in nodes:
            snapshot = _NodeSnapshot(node)
            self._pending[_uuid(snapshot.id)] = snapshot
        if not self._pending:
            self._pending = None

    def _one(self, key: Any) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            waiting = key in pending and not dict.__contains__(self, key)
        except TypeError:  # an unhashable key: the dict's own lookup says so
            return
        if waiting:
            dict.__setitem__(self, key, build_task(pending[key], strict=self._strict))

    def _all(self) -> None:
        pending = self._pending
        if pending is None:
            return
        built = dict(dict.items(self))
        ordered: dict[Any, Any] = {}
        for key, snapshot in pending.items():  # a build that raises leaves the dict as it was
            task = built.pop(key, None)
            ordered[key] = task if task is not None else build_task(snapshot, strict=self._strict)
        ordered.update(built)  # set by hand meanwhile
        self._pending = None
        dict.clear(self)
        dict.update(self, ordered)

    def __getitem__(self, key: Any) -> Any:
        self._one(key)
        return dict.__getitem__(self, key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._one(key)
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        pending = self._pending
        try:
            return dict.__contains__(self, key) or (pending is not None and key in pending)
        except TypeError:
            return False

    def __setitem__(self, key: Any, value: Any) -> None:
        self._all()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        self._all()
        dict.__delitem__(self, key)

    def __iter__(self) -> Iterator[Any]:
        self._all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._all()
        return dict.__len__(self)

    def __repr__(self) -> str:
        self._all()
        return dict.__repr__(self)

    def __eq__(self, other: object) -> bool:
        self._all()
        if isinstance(other, _LazyTasks):
            other._all()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        self._all()
        return (dict, (dict(dict.items(self)),))

    def __or__(self, other: Any) -> Any:
        self._all()
        return dict.__or__(self, other)

    def __ror__(self, other: Any) -> Any:
        self._all()
        return dict.__ror__(self, other)

    def __ior__(self, other: Any) -> Any:
        self._all()
        return dict.__ior__(self, other)

    def __reversed__(self) -> Iterator[Any]:
        self._all()
        return dict.__reversed__(self)

    def __bool__(self) -> bool:
        pending = self._pending
        return bool(pending) or dict.__len__(self) > 0


def _whole(name: str) -> Any:
    method = getattr(dict, name)

    def whole(self: _LazyTasks, *args: Any, **kwargs: Any) -> Any:
        self._all()
        return method(self, *args, **kwargs)

    whole.__name__ = name
    return whole


for _name in ("keys", "values", "items", "copy", "pop", "popitem", "setdefault", "update", "clear"):
    setattr(_LazyTasks, _name, _whole(_name))


__all__ = ["build_task", "build_workflow_view", "import_class"]
