"""Materialisation: one walk of a workflow template producing the flat list of node rows to insert.

See ``docs/internals.md``. The walk expands the template graph into a tree (a template object
shared by two parents becomes two nodes), resolves per-workflow shapes (dynamic processes,
parallel process groups) and the trigger/interval times from the runtime parameters, and gives
every node an id. Nothing is stored and no template or builder is changed.
"""

from __future__ import annotations

import math
import numbers
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import (
    InvalidRuntimeParameters,
    InvalidTemplate,
    InvalidTriggerTimeForTask,
    TaskInvalidState,
)
from .enums import COMPLETE_BY_KEY, NodeKind
from .ids import new_id, seeded_random
from .tasks import IMonitoredTask, MonitoringTask, class_path
from .templates import (
    DefaultIntervalTaskTemplate,
    DefaultTriggerTaskTemplate,
    DynamicProcessTemplateDAG,
    ITemplateDAG,
    ParallelCompositeProcessTemplateDAG,
    TaskTemplate,
    build_template,
    check_node,
    check_template_header,
    link_process_chain,
    node_static_config,
    take_pending_shape,
    template_children,
    template_class,
    template_kind,
    template_node_type,
    template_successors,
)

#: Latest accepted epoch second (end of year 9999): larger values are usually milliseconds.
MAX_EPOCH_SECONDS = 253_402_300_799


@dataclass
class NodeSpec:
    """One node row to insert (see ``docs/internals.md`` for every field)."""

    id: uuid.UUID
    parent_id: uuid.UUID | None
    name: str
    node_type: str
    kind: str
    task_class: str
    position: int
    next_ids: list[uuid.UUID] = field(default_factory=list)
    child_ids: list[uuid.UUID] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Materialized:
    """The result of :func:`materialize`: the first workflow-level node and every node, in order."""

    root_ids: list[uuid.UUID]
    nodes: list[NodeSpec]


def materialize(
    template: Any,
    *,
    workflow_id: uuid.UUID | None,
    runtime_parameters: Mapping[str, Any] | None,
    seed: random.Random | str | None = None,
    dynamic_process_builders: Mapping[str, Any] | None = None,
    parallel_process_templates: Mapping[str, Any] | None = None,
) -> Materialized:
    """Walk ``template`` once and return the nodes of one new workflow.

    ``seed`` (a ``random.Random`` or a str) makes the node ids reproducible; without it ids are
    time-ordered. ``dynamic_process_builders`` maps a dynamic process name to a list of process
    builders (or templates); ``parallel_process_templates`` maps a parallel process group name to a
    list of process templates (or builders), or to ``(n, builder)`` for n copies. A shape recorded
    on the template in this context with the seed's mutators is used (and cleared) too; explicit
    arguments win. Raises ``InvalidTemplate``, ``InvalidTriggerTimeForTask`` or ``TaskInvalidState``
    before anything is produced.
    """
    if not isinstance(template, ITemplateDAG):
        raise InvalidTemplate(f"{template!r} is not a workflow template")
    if runtime_parameters is None:
        runtime_parameters = {}
    if not isinstance(runtime_parameters, Mapping):
        raise InvalidRuntimeParameters("runtime parameters must be a mapping of names to values")
    check_template_header(template)
    walker = _Materializer(
        template,
        runtime_parameters,
        seeded_random(seed),
        dynamic_process_builders,
        parallel_process_templates,
    )
    root_id = walker.emit(
        template.root_process_dag,
        parent_id=None,
        parent_name=template.name,
        path=(template.name,),
        on_path=frozenset(),
    )
    walker.check_unused()
    return Materialized(root_ids=[root_id], nodes=walker.nodes)


def _shape_mapping(value: Any, argument: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTemplate(f"{argument} must map process names to their shape, not {type(value).__name__}")
    return dict(value)


class _Materializer:
    def __init__(
        self,
        template: Any,
        params: Mapping[str, Any],
        rng: random.Random | None,
        dynamic: Mapping[str, Any] | None,
        parallel: Mapping[str, Any] | None,
    ) -> None:
        self.template = template
        self.params = params
        self.rng = rng
        pending = take_pending_shape(template)
        self.dynamic = {**pending["dynamic"], **_shape_mapping(dynamic, "dynamic_process_builders")}
        self.parallel = {**pending["parallel"], **_shape_mapping(parallel, "parallel_process_templates")}
        self.used_dynamic: set[str] = set()
        self.used_parallel: set[str] = set()
        self._object_shapes: dict[int, dict[str, dict[str, Any]]] = {}
        self.nodes: list[NodeSpec] = []

    # -- walk -------------------------------------------------------------------------------------
    def emit(
        self,
        template: Any,
        *,
        parent_id: uuid.UUID | None,
        parent_name: str,
        path: tuple[str, ...],
        on_path: frozenset[int],
    ) -> uuid.UUID:
        """Create the node(s) for ``template`` in this slot; return the id of the node placed there."""
        if not isinstance(template, TaskTemplate):
            hint = " (call .build() on the builder)" if hasattr(template, "build") else ""
            raise InvalidTemplate(f"{' > '.join(path)}: dangling reference to {template!r}{hint}")
        here = (*path, str(template.name))
        if id(template) in on_path:
            raise InvalidTemplate(f"cycle: {' > '.join(here)} is reached again on its own path")
        if isinstance(template, DynamicProcessTemplateDAG):
            return self._emit_dynamic(
                template, parent_id=parent_id, parent_name=parent_name, here=here, on_path=on_path
            )
        check_node(template, here, creating=True)

        node_id = new_id(self.rng)
        name = f"{parent_name}.{template.name}"
        kind = template_kind(template)
        spec = NodeSpec(
            id=node_id,
            parent_id=parent_id,
            name=name,
            node_type=template_node_type(template),
            kind=kind,
            task_class=class_path(template_class(template)),
            position=len(self.nodes),
            config=self._config(template, kind, here),
        )
        self.nodes.append(spec)
        inner = on_path | {id(template)}
        for child in self._children(template, here):
            spec.child_ids.append(
                self.emit(child, parent_id=node_id, parent_name=name, path=here, on_path=inner)
            )
        for successor in template_successors(template):
            spec.next_ids.append(
                self.emit(successor, parent_id=parent_id, parent_name=parent_name, path=here, on_path=inner)
            )
        return node_id

    def _emit_dynamic(
        self,
        template: DynamicProcessTemplateDAG,
        *,
        parent_id: uuid.UUID | None,
        parent_name: str,
        here: tuple[str, ...],
        on_path: frozenset[int],
    ) -> uuid.UUID:
        inner = on_path | {id(template)}
        builders = self._dynamic_builders(template, here)
        if builders:
            built = [build_template(b, " > ".join(here)) for b in builders]
            head = link_process_chain(built, template.next_process_dag)
            return self.emit(head, parent_id=parent_id, parent_name=parent_name, path=here, on_path=inner)
        if template.next_process_dag:
            return self.emit(
                template.next_process_dag[0],
                parent_id=parent_id,
                parent_name=parent_name,
                path=here,
                on_path=inner,
            )
        raise TaskInvalidState(
            f"{' > '.join(here)}: dynamic process has no process builders for this workflow and no next process"
        )

    def _object_shape(self, template: Any) -> dict[str, dict[str, Any]]:
        shape = self._object_shapes.get(id(template))
        if shape is None:
            shape = take_pending_shape(template)
            self._object_shapes[id(template)] = shape
        return shape

    def _dynamic_builders(self, template: DynamicProcessTemplateDAG, here: tuple[str, ...]) -> list[Any]:
        if template.name in self.dynamic:
            self.used_dynamic.add(template.name)
            value = self.dynamic[template.name]
        else:
            value = self._object_shape(template)["dynamic"].get(template.name)
        if value is None:
            return []
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise InvalidTemplate(
                f"{' > '.join(here)}: dynamic process builders must be a list, not {value!r}"
            )
        return list(value)

    def _children(self, template: Any, here: tuple[str, ...]) -> list[Any]:
        if not isinstance(template, ParallelCompositeProcessTemplateDAG):
            return template_children(template)
        where = " > ".join(here)
        if template.name in self.parallel:
            self.used_parallel.add(template.name)
            value = self.parallel[template.name]
        else:
            value = self._object_shape(template)["parallel"].get(template.name)
        if value is None:
            children = list(template.child_process_task_templates)
        elif (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], int)
            and not isinstance(value[0], bool)
        ):
            count, builder = value
            if count < 0:
                raise InvalidTemplate(f"{where}: the number of parallel processes must be >= 1, not {count}")
            children = [build_template(builder, where) for _ in range(count)]
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            children = [build_template(item, where) for item in value]
        else:
            raise InvalidTemplate(
                f"{where}: parallel process templates must be a list or (n, builder), not {value!r}"
            )
        if not children:
            raise InvalidTemplate(
                f"{where}: parallel process group has zero children; pass "
                f"parallel_process_templates={{{template.name!r}: [...]}} when creating the workflow"
            )
        return children

    def check_unused(self) -> None:
        """Explicit shapes must name a dynamic process / parallel group of the template."""
        for name in sorted(set(self.dynamic) - self.used_dynamic):
            if not isinstance(self.template.get_given_process(name), DynamicProcessTemplateDAG):
                raise InvalidTemplate(f"{self.template.name}: there is no dynamic process named {name!r}")
        for name in sorted(set(self.parallel) - self.used_parallel):
            if not isinstance(self.template.get_given_process(name), ParallelCompositeProcessTemplateDAG):
                raise InvalidTemplate(
                    f"{self.template.name}: there is no parallel process group named {name!r}"
                )

    # -- configuration ----------------------------------------------------------------------------
    def _config(self, template: Any, kind: str, here: tuple[str, ...]) -> dict[str, Any]:
        config = node_static_config(template)
        where = " > ".join(here)
        if kind == NodeKind.TRIGGER and isinstance(template, DefaultTriggerTaskTemplate):
            config["time_to_execute"] = _epoch(
                self.params, template.time_to_execute_lookup_key, "time to execute", where
            )
        elif kind == NodeKind.INTERVAL and isinstance(template, DefaultIntervalTaskTemplate):
            start = None
            if template.time_to_execute_lookup_key is not None:
                start = _epoch(self.params, template.time_to_execute_lookup_key, "time to execute", where)
            deadline = _epoch(
                self.params, template.time_to_force_complete_lookup_key, "time to force complete", where
            )
            period = _period(self.params, template.interval_execute_period_key, where)
            if start is not None and deadline < start:
                raise InvalidTriggerTimeForTask(
                    f"{where}: time to force complete ({deadline}) is before the time to execute ({start})"
                )
            config["time_to_execute"] = start
            config["time_to_force_complete"] = deadline
            config["interval_execute_period"] = period
        elif kind == NodeKind.PROCESS:
            checkpoint = getattr(template, "checkpoint", None) or getattr(self.template, "checkpoint", "task")
            if checkpoint == "process":
                config["checkpoint"] = checkpoint  # read by the engine's runner (engine/services.py)
            monitor = _monitoring_task_class(template, where)
            if monitor is not None:
                config["monitoring_task_class"] = monitor
                if self.params.get(COMPLETE_BY_KEY) is not None:
                    # Read again when the process starts; checked now so bad input stores nothing.
                    _epoch(self.params, COMPLETE_BY_KEY, "complete by time", where)
        return config


def _monitoring_task_class(template: Any, where: str) -> str | None:
    """The monitor class path of a monitored process (``IMonitoredTask``), else None."""
    process_type = template_class(template)
    if not (isinstance(process_type, type) and issubclass(process_type, IMonitoredTask)):
        return None
    try:
        monitor = process_type().get_monitoring_task_type()
    except Exception as exc:  # noqa: BLE001 - any failure is a template problem, reported as such
        raise InvalidTemplate(
            f"{where}: get_monitoring_task_type() failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(monitor, type) and issubclass(monitor, MonitoringTask)):
        raise InvalidTemplate(
            f"{where}: get_monitoring_task_type() must return a MonitoringTask subclass, not {monitor!r}"
        )
    return class_path(monitor)


# -- runtime values ---------------------------------------------------------------------------------
def _lookup(params: Mapping[str, Any], key: str | None, what: str, where: str) -> Any:
    if not key:
        raise InvalidTriggerTimeForTask(f"{where}: no {what} lookup key is set")
    value = params.get(key)
    if value is None:
        raise InvalidTriggerTimeForTask(f"{where}: runtime parameter {key!r} ({what}) is missing")
    return value


def _number(value: Any) -> int | float | None:
    """A finite int/float from a number or a numeric string; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, int):
        return value
    if isinstance(value, numbers.Real):
        as_float = float(value)
        return as_float if math.isfinite(as_float) else None
    return None


def _epoch(params: Mapping[str, Any], key: str | None, what: str, where: str) -> int | float:
    raw = _lookup(params, key, what, where)
    value = _number(raw)
    if value is None:
        raise InvalidTriggerTimeForTask(
            f"{where}: runtime parameter {key!r} ({what}) must be epoch seconds (a number), not {raw!r}"
        )
    if value < 0 or value > MAX_EPOCH_SECONDS:
        raise InvalidTriggerTimeForTask(
            f"{where}: runtime parameter {key!r} ({what}) = {raw!r} is not a valid epoch in seconds"
            + (" (milliseconds?)" if value > MAX_EPOCH_SECONDS else "")
        )
    # Fractions are kept: a trigger due at 12.5 s must not fire at 12 s.
    return value


def _period(params: Mapping[str, Any], key: str | None, where: str) -> int | float:
    raw = _lookup(params, key, "interval period", where)
    value = _number(raw)
    if value is None or value <= 0:
        raise InvalidTriggerTimeForTask(
            f"{where}: runtime parameter {key!r} (interval period) must be a number of seconds > 0, not {raw!r}"
        )
    return int(value) if float(value).is_integer() else float(value)


__all__ = ["Materialized", "NodeSpec", "materialize"]
