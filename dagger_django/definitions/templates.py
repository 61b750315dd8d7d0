"""Builders and templates: how a workflow is described, with the original's classes and setters.

A builder collects settings and ``build()`` returns an immutable-by-convention template object;
templates link to each other (``next`` successors, process root tasks, parallel children) to form
a directed acyclic graph. A registered :class:`TemplateDAG` is never changed afterwards: creating
a workflow walks it (:func:`dagger_django.definitions.graph.materialize`) and the engine keeps the
resulting node rows, so a running workflow never depends on the template again.

Differences from the original, on purpose:

* ``build()`` copies every list, so two templates built from one builder share nothing, and the
  listener builder registers no Kafka consumer (the bridge reads topics from the node rows).
* The original's shape mutators on a registered template (dynamic process builders, parallel
  process lists) changed it for every later creation. Here they record the shape in a
  ``contextvars.ContextVar`` that the next creation of that template in the same context uses
  and clears; passing ``dynamic_process_builders=`` / ``parallel_process_templates=`` to
  ``create_instance`` is the explicit way.
* ``get_given_process`` searches the whole process graph, not only first successors.
* ``validate()`` rejects cycles and dangling references when a template is registered.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from ..exceptions import InvalidTaskType, InvalidTemplate
from . import engine_door
from .enums import NodeKind, TaskOperator, TaskType
from .params import Param, ParameterDeclaration, declaration
from .sync import sync_only
from .tasks import (
    DecisionTask,
    DefaultProcessTemplateDAGInstance,
    DefaultTemplateDAGInstance,
    IProcessTemplateDAGInstance,
    ITask,
    ITemplateDAGInstance,
    KafkaCommandTask,
    KafkaListenerTask,
    ParallelCompositeTask,
    TriggerTask,
    class_path,
    task_kind,
)

logger = logging.getLogger("dagger_django.definitions")

FAILURE_POLICIES = ("halt", "continue")
#: How often a workflow's progress is made durable (docs/execution-model.md#checkpoints): after
#: every task (the default), or once per run of consecutive executor tasks of one process.
CHECKPOINTS = ("task", "process")


def _checkpoint(value: str) -> str:
    if value not in CHECKPOINTS:
        raise InvalidTemplate(f"checkpoint must be one of {CHECKPOINTS}, not {value!r}")
    return value


# ==================================================================================================
# small helpers
# ==================================================================================================
def _topic_name(topic: Any) -> str:
    """The name of a topic given as a str or an object with ``.name`` / ``.topic_name``."""
    if isinstance(topic, str):
        name: Any = topic
    else:
        name = getattr(topic, "name", None) or getattr(topic, "topic_name", None)
        if not name and callable(getattr(topic, "get_topic_name", None)):
            name = topic.get_topic_name()
    if not isinstance(name, str) or not name:
        raise InvalidTemplate(f"set_topic: {topic!r} is neither a topic name nor an object with a .name")
    return name


def _operator(operator: Any) -> TaskOperator:
    if isinstance(operator, TaskOperator):
        return operator
    if isinstance(operator, str) and operator in TaskOperator.__members__:
        return TaskOperator[operator]
    raise InvalidTemplate(f"{operator!r} is not a TaskOperator (JOIN_ALL or ATLEAST_ONE)")


def _is_subclass(value: Any, base: type | tuple[type, ...]) -> bool:
    return isinstance(value, type) and issubclass(value, base)


def _class_name(value: Any) -> str:
    return value.__qualname__ if isinstance(value, type) else repr(value)


# ==================================================================================================
# pending per-creation shapes (the seed's mutators, made safe)
# ==================================================================================================
_Shape = dict[str, dict[str, Any]]
_pending_shapes: ContextVar[dict[int, tuple[object, _Shape]] | None] = ContextVar(
    "dagger_django_pending_shapes", default=None
)


def _empty_shape() -> _Shape:
    return {"dynamic": {}, "parallel": {}}


def record_pending_shape(owner: object, section: str, name: str, value: Any) -> None:
    """Remember a shape for the next materialisation of ``owner`` in this context.

    The stored mapping is replaced, never changed in place, so contexts copied earlier (other
    threads, other asyncio tasks) never see it.
    """
    current = _pending_shapes.get() or {}
    entry = current.get(id(owner))
    shape = (
        _empty_shape()
        if entry is None or entry[0] is not owner
        else {k: dict(v) for k, v in entry[1].items()}
    )
    shape[section][name] = value
    _pending_shapes.set({**current, id(owner): (owner, shape)})


def take_pending_shape(owner: object) -> _Shape:
    """Return and clear the shape recorded for ``owner`` in this context (empty if none)."""
    current = _pending_shapes.get()
    entry = current.get(id(owner)) if current else None
    if entry is None or entry[0] is not owner:
        return _empty_shape()
    remaining = {k: v for k, v in current.items() if k != id(owner)}  # type: ignore[union-attr]
    _pending_shapes.set(remaining or None)
    return entry[1]


# ==================================================================================================
# task templates
# ==================================================================================================
class TaskTemplate:
    """Base of every template node (tasks and processes alike, as in the original, any task template
    may stand where a process is expected)."""

    name: str

    def create_instance(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "Only a workflow template creates instances here: use TemplateDAG.create_instance(), "
            "which materialises every node of the workflow at once."
        )


class DefaultTaskTemplate(TaskTemplate):
    """A task of class ``type`` named ``name``, followed by ``task_dag_template`` (alternatives: only
    the first one that is not SKIPPED runs, normally after a decision)."""

    def __init__(
        self,
        app: Any,
        type: type[ITask[Any, Any]],
        name: str,
        task_dag_template: Sequence[TaskTemplate],
        allow_skip_to: bool,
        reprocess_on_message: bool = False,
    ) -> None:
        self.app = app
        self._type = type
        self.name = name
        self.next_task_dag: list[TaskTemplate] = list(task_dag_template or [])
        self.allow_skip_to = allow_skip_to
        self.reprocess_on_message = reprocess_on_message

    @property
    def task_type(self) -> type[ITask[Any, Any]]:
        return self._type

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} type={_class_name(self._type)}>"


class DefaultKafkaTaskTemplate(DefaultTaskTemplate):
    """A Kafka command or listener task; ``topic`` is stored as the topic's name."""

    def __init__(
        self,
        app: Any,
        type: type[ITask[Any, Any]],
        name: str,
        topic: Any,
        task_dag_templates: Sequence[TaskTemplate],
        allow_skip_to: bool,
        reprocess_on_message: bool = False,
        *,
        concurrency: int = 1,
    ) -> None:
        super().__init__(app, type, name, task_dag_templates, allow_skip_to, reprocess_on_message)
        self.topic: str | None = None if topic is None else _topic_name(topic)
        self.concurrency = concurrency


class DefaultTriggerTaskTemplate(DefaultTaskTemplate):
    """A trigger task: runs at the epoch time found in ``runtime_parameters[time_to_execute_key]``."""

    def __init__(
        self,
        app: Any,
        type: type[ITask[Any, Any]],
        name: str,
        time_to_execute_key: str | None,
        task_dag_templates: Sequence[TaskTemplate],
        allow_skip_to: bool,
    ) -> None:
        super().__init__(app, type, name, task_dag_templates, allow_skip_to)
        self.time_to_execute_lookup_key = time_to_execute_key


class DefaultIntervalTaskTemplate(DefaultTaskTemplate):
    """An interval task: polls every ``runtime_parameters[interval_execute_period_key]`` seconds from
    the optional start time until done or ``runtime_parameters[time_to_force_complete_key]``."""

    def __init__(
        self,
        app: Any,
        type: type[ITask[Any, Any]],
        name: str,
        time_to_execute_key: str | None,
        time_to_force_complete_key: str | None,
        interval_execute_period_key: str | None,
        task_dag_templates: Sequence[TaskTemplate],
        allow_skip_to: bool,
    ) -> None:
        super().__init__(app, type, name, task_dag_templates, allow_skip_to)
        self.time_to_execute_lookup_key = time_to_execute_key
        self.time_to_force_complete_lookup_key = time_to_force_complete_key
        self.interval_execute_period_key = interval_execute_period_key


class ParallelCompositeTaskTemplate(DefaultTaskTemplate):
    """A group of tasks started together; the group completes per ``parallel_operator_type``."""

    def __init__(
        self,
        app: Any,
        type: type[ITask[Any, Any]],
        name: str,
        task_dag_templates: Sequence[TaskTemplate],
        child_task_templates: Sequence[TaskTemplate],
        allow_skip_to: bool,
        reprocess_on_message: bool = False,
        parallel_operator_type: TaskOperator = TaskOperator.JOIN_ALL,
    ) -> None:
        super().__init__(app, type, name, task_dag_templates, allow_skip_to, reprocess_on_message)
        self.child_task_templates: list[TaskTemplate] = list(child_task_templates or [])
        self.parallel_operator_type = parallel_operator_type


# ==================================================================================================
# process templates
# ==================================================================================================
class IProcessTemplateDAG(TaskTemplate):
    """Base of process-level templates: a process, a parallel process group, a dynamic placeholder."""

    def __init__(
        self,
        next_process_dag: Sequence[TaskTemplate],
        app: Any,
        name: str,
        process_type: type[ITask[Any, Any]] | None,
        root_task_dag: TaskTemplate | None,
        max_run_duration: int,
    ) -> None:
        self.next_process_dag: list[TaskTemplate] = list(next_process_dag or [])
        self.app = app
        self.name = name
        self.process_type = process_type
        self.root_task_dag = root_task_dag
        self.max_run_duration = max_run_duration

    def set_dynamic_process_builders(self, process_template_builders: Sequence[Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} {self.name!r} is not a dynamic process")

    def set_parallel_process_template_dags(self, parallel_process_templates: Sequence[Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} {self.name!r} is not a parallel process group")

    def validate(self) -> None:
        """Check this process and everything reachable from it; raise ``InvalidTemplate``."""
        _GraphWalk().visit(self, (), frozenset(), None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class ProcessTemplateDAG(IProcessTemplateDAG):
    """A process: ``root_task_dag`` and its chain run inside it; then ``next_process_dag`` follows."""

    #: ``"task"`` or ``"process"``; None: the workflow template's.
    checkpoint: str | None = None


class ParallelCompositeProcessTemplateDAG(ProcessTemplateDAG):
    """A group of processes started together, completing per ``parallel_operator_type``.

    Its children may be left empty in the registered template and supplied for each workflow
    (``parallel_process_templates=`` or the ``set_*_parallel_*`` shape methods).
    """

    def __init__(
        self,
        next_process_dag: Sequence[TaskTemplate],
        app: Any,
        name: str,
        process_type: type[ITask[Any, Any]] | None,
        child_process_task_templates: Sequence[TaskTemplate],
        parallel_operator_type: TaskOperator,
    ) -> None:
        super().__init__(next_process_dag, app, name, process_type, None, 0)
        self.child_process_task_templates: list[TaskTemplate] = list(child_process_task_templates or [])
        self.parallel_operator_type = parallel_operator_type

    def set_parallel_process_template_dags(self, parallel_process_templates: Sequence[Any]) -> None:
        """Use these children for the next workflow created in this context (no mutation)."""
        record_pending_shape(self, "parallel", self.name, list(parallel_process_templates))


class IDynamicProcessTemplateDAG(IProcessTemplateDAG):
    """A placeholder replaced, when a workflow is created, by processes built for that workflow."""

    def __init__(
        self, next_process_dags: Sequence[TaskTemplate], app: Any, name: str, max_run_duration: int
    ) -> None:
        super().__init__(next_process_dags, app, name, None, None, max_run_duration)

    def set_parallel_process_template_dags(self, parallel_process_templates: Sequence[Any]) -> None:
        raise NotImplementedError("a dynamic process has no parallel children")


class DynamicProcessTemplateDAG(IDynamicProcessTemplateDAG):
    """The dynamic process placeholder.

    At creation it becomes ``B1 -> ... -> Bn -> <its next processes>`` for the builders given for
    that workflow; with none it is skipped in favour of its first next process.
    """

    def __init__(
        self, next_process_dag: Sequence[TaskTemplate], app: Any, name: str, max_run_duration: int
    ) -> None:
        super().__init__(next_process_dag, app, name, max_run_duration)

    def set_dynamic_process_builders(self, process_template_builders: Sequence[Any]) -> None:
        """Use these builders for the next workflow created in this context (no mutation)."""
        record_pending_shape(self, "dynamic", self.name, tuple(process_template_builders))

    def build_and_link_processes(
        self, process_builder_list: Sequence[Any], dag_templates: Sequence[TaskTemplate]
    ) -> TaskTemplate:
        """Build the builders and chain them, followed by ``dag_templates``; returns the head.

        The builders are not changed: links are added to the freshly built templates only.
        """
        if not process_builder_list:
            raise InvalidTemplate(f"dynamic process {self.name!r}: no process builders to link")
        return link_process_chain([build_template(b) for b in process_builder_list], dag_templates)


def build_template(item: Any, where: str = "") -> TaskTemplate:
    """A template from a template or a builder (``.build()`` is called)."""
    if isinstance(item, TaskTemplate):
        return item
    build = getattr(item, "build", None)
    if callable(build):
        built = build()
        if isinstance(built, TaskTemplate):
            return built
        item = built
    prefix = f"{where}: " if where else ""
    raise InvalidTemplate(f"{prefix}{item!r} is neither a process template nor a builder of one")


def _with_extra_successors(template: TaskTemplate, extra: Sequence[TaskTemplate]) -> TaskTemplate:
    """A shallow copy of ``template`` with ``extra`` appended to its successors."""
    clone = copy.copy(template)
    if isinstance(clone, IProcessTemplateDAG):
        clone.next_process_dag = [*clone.next_process_dag, *extra]
    elif isinstance(clone, DefaultTaskTemplate):
        clone.next_task_dag = [*clone.next_task_dag, *extra]
    else:
        raise InvalidTemplate(f"{template!r} cannot be chained")
    return clone


def link_process_chain(templates: Sequence[TaskTemplate], tail: Sequence[TaskTemplate]) -> TaskTemplate:
    """Chain ``templates`` in order, the last one followed by ``tail``; returns the head.

    Works on copies, so neither the templates nor the builders they came from change.
    """
    successors: list[TaskTemplate] = list(tail)
    for template in reversed(templates):
        successors = [_with_extra_successors(template, successors)]
    return successors[0]


# ==================================================================================================
# workflow templates
# ==================================================================================================
class ITemplateDAG:
    """Base of workflow templates."""

    def __init__(
        self, dag: TaskTemplate | None, name: str, app: Any, template_type: type[ITask[Any, Any]]
    ) -> None:
        self.root_process_dag = dag
        self.name = name
        self.app = app
        self.template_type = template_type

    def create_instance(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def set_dynamic_builders_for_process_template(
        self, name: str, process_template_builders: Sequence[Any]
    ) -> None:
        raise NotImplementedError


class TemplateDAG(ITemplateDAG):
    """A workflow template: ``root_process_dag`` and everything after it.

    ``failure_policy`` is ``"halt"`` or ``"continue"``; unset, it is ``template_type.failure_policy``.
    ``parameters``, when given, declares the runtime parameters every creation is checked against
    (:mod:`dagger_django.definitions.params`); None (the default) accepts any JSON object.
    """

    def __init__(
        self,
        dag: TaskTemplate | None,
        name: str,
        app: Any,
        template_type: type[ITask[Any, Any]],
        *,
        failure_policy: str | None = None,
        checkpoint: str = "task",
        parameters: ParameterDeclaration | Sequence[Param] | Mapping[str, Any] | None = None,
        allow_extra_parameters: bool = False,
    ) -> None:
        super().__init__(dag, name, app, template_type)
        self._failure_policy = failure_policy
        #: The declared runtime parameters, or None: any JSON object is accepted.
        self.parameters: ParameterDeclaration | None = declaration(
            parameters, allow_extra=allow_extra_parameters
        )
        #: The processes' default (``ProcessTemplateDagBuilder.set_checkpoint`` overrides it).
        self.checkpoint = _checkpoint(checkpoint)

    def __repr__(self) -> str:
        return f"<TemplateDAG {self.name!r}>"

    @property
    def failure_policy(self) -> str:
        if self._failure_policy is not None:
            return self._failure_policy
        return getattr(self.template_type, "failure_policy", "halt")

    @failure_policy.setter
    def failure_policy(self, value: str | None) -> None:
        if value is not None and value not in FAILURE_POLICIES:
            raise InvalidTemplate(f"failure_policy must be one of {FAILURE_POLICIES}, not {value!r}")
        self._failure_policy = value

    # -- lookup ------------------------------------------------------------------------------------
    def get_given_process(self, process_name: str) -> TaskTemplate | None:
        """The first process-level template named ``process_name``, searching the whole graph
        (every successor and the children of parallel process groups); None if there is none.

        The original followed only the first successor at each step.
        """
        seen: set[int] = set()
        stack: list[TaskTemplate] = [self.root_process_dag] if self.root_process_dag is not None else []
        while stack:
            node = stack.pop()
            if not isinstance(node, TaskTemplate) or id(node) in seen:
                continue
            seen.add(id(node))
            if getattr(node, "name", None) == process_name:
                return node
            following: list[TaskTemplate] = []
            if isinstance(node, ParallelCompositeProcessTemplateDAG):
                following.extend(node.child_process_task_templates)
            following.extend(_successors(node))
            stack.extend(reversed(following))
        logger.warning("template %r has no process named %r", self.name, process_name)
        return None

    # -- the seed's shape mutators: recorded per context, never applied to the template ----------
    def _named(self, name: str, expected: type, what: str) -> TaskTemplate:
        process = self.get_given_process(name)
        if process is None:
            raise InvalidTemplate(f"template {self.name!r} has no process named {name!r}")
        if not isinstance(process, expected):
            raise NotImplementedError(f"process {name!r} of template {self.name!r} is not {what}")
        return process

    def set_dynamic_builders_for_process_template(
        self, name: str, process_template_builders: Sequence[Any]
    ) -> None:
        """Use these process builders for the dynamic process ``name`` of the next workflow created
        from this template in the current context (thread or asyncio task). The template itself is
        not changed; prefer ``create_instance(..., dynamic_process_builders={name: [...]})``."""
        self._named(name, DynamicProcessTemplateDAG, "a dynamic process")
        record_pending_shape(self, "dynamic", name, tuple(process_template_builders))

    def set_parallel_process_template_dags_for_a_composite_process(
        self, name: str, parallel_process_templates: Sequence[Any]
    ) -> None:
        """Use these process templates as the children of parallel group ``name`` in the next
        workflow created from this template in the current context (no mutation)."""
        self._named(name, ParallelCompositeProcessTemplateDAG, "a parallel process group")
        record_pending_shape(self, "parallel", name, list(parallel_process_templates))

    def set_given_num_of_parallel_processes_for_a_composite_process(
        self, no_of_processes: int, composite_process_name: str, parallel_template_builder: Any
    ) -> None:
        """Give parallel group ``composite_process_name`` ``no_of_processes`` children built from
        ``parallel_template_builder`` in the next workflow created in this context (no mutation)."""
        self._named(composite_process_name, ParallelCompositeProcessTemplateDAG, "a parallel process group")
        if isinstance(no_of_processes, bool) or not isinstance(no_of_processes, int) or no_of_processes < 1:
            raise InvalidTemplate(f"no_of_processes must be a positive int, not {no_of_processes!r}")
        record_pending_shape(
            self, "parallel", composite_process_name, (no_of_processes, parallel_template_builder)
        )

    # -- description ------------------------------------------------------------------------------
    def _describe(self) -> dict[str, Any]:
        check_template_header(self)
        walk = _GraphWalk()
        root = walk.visit(self.root_process_dag, (self.name,), frozenset(), None)
        described: dict[str, Any] = {
            "name": self.name,
            "template_type": class_path(self.template_type),
            "failure_policy": self.failure_policy,
            "root": root,
            "nodes": walk.nodes,
        }
        declared = getattr(self, "parameters", None)
        if declared is not None:
            # Only when declared: the graph (and digest) of a template without a declaration
            # stays what it was, so its stored version does not change.
            described["parameters"] = declared.to_json()
        return described

    def validate(self) -> None:
        """Raise ``InvalidTemplate`` (naming the path) for a cycle or a dangling reference."""
        self._describe()

    def to_graph(self) -> dict[str, Any]:
        """A JSON-ready description of the template (validated first).

        ``nodes`` lists every template object once, depth first, with a stable ``key`` (the path
        of names where it was first reached), ``name``, ``node_type``, ``kind``, ``task_class``,
        ``config`` and the keys of its ``next`` successors and ``children``.
        """
        return self._describe()

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`to_graph`: equal for equal definitions."""
        canonical = json.dumps(self.to_graph(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    # -- creation ---------------------------------------------------------------------------------
    def _shape_for_call(
        self,
        dynamic_process_builders: Mapping[str, Any] | None,
        parallel_process_templates: Mapping[str, Any] | None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        pending = take_pending_shape(self)
        dynamic = {**pending["dynamic"], **dict(dynamic_process_builders or {})}
        parallel = {**pending["parallel"], **dict(parallel_process_templates or {})}
        return dynamic or None, parallel or None

    @sync_only("template.acreate_instance")
    def create_instance(
        self,
        id: Any = None,
        partition_key_lookup: str | None = None,
        *,
        repartition: bool = False,
        seed: Any = None,
        submit_task: bool = False,
        dynamic_process_builders: Mapping[str, Any] | None = None,
        parallel_process_templates: Mapping[str, Any] | None = None,
        **runtime_parameters: Any,
    ) -> Any:
        """Create a workflow from this template; every extra keyword is a runtime parameter.

        ``submit_task=True`` also starts it. ``repartition`` is accepted and ignored: the database
        is shared by every worker, so there is no partition owner to hand the workflow to.
        ``dynamic_process_builders`` maps a dynamic process name to its process builders, and
        ``parallel_process_templates`` maps a parallel group name to its process templates (or to
        ``(n, builder)`` for n copies), for this workflow only. With declared ``parameters``
        the runtime parameters are checked (and defaults filled in) first; a mismatch, or a
        ``partition_key_lookup`` naming no given parameter, raises ``InvalidRuntimeParameters``
        and stores nothing. Returns the workflow as an
        instance of ``template_type`` (``id``, ``status``, ``runtime_parameters``, ``tasks``), as
        the original did; ``instance.model`` is the stored :class:`~dagger_django.models.Workflow`.
        """
        dynamic, parallel = self._shape_for_call(dynamic_process_builders, parallel_process_templates)
        return engine_door.create_workflow(
            template=self,
            workflow_id=id,
            partition_key_lookup=partition_key_lookup,
            runtime_parameters=runtime_parameters,
            submit=submit_task,
            seed=seed,
            dynamic_process_builders=dynamic,
            parallel_process_templates=parallel,
        )

    async def acreate_instance(
        self,
        id: Any = None,
        partition_key_lookup: str | None = None,
        *,
        repartition: bool = False,
        seed: Any = None,
        submit_task: bool = False,
        dynamic_process_builders: Mapping[str, Any] | None = None,
        parallel_process_templates: Mapping[str, Any] | None = None,
        **runtime_parameters: Any,
    ) -> Any:
        """Async twin of :meth:`create_instance` (runs it in a worker thread)."""
        from asgiref.sync import sync_to_async

        # Take the shape recorded in the caller's context before switching threads.
        dynamic, parallel = self._shape_for_call(dynamic_process_builders, parallel_process_templates)
        return await sync_to_async(self.create_instance)(
            id,
            partition_key_lookup,
            repartition=repartition,
            seed=seed,
            submit_task=submit_task,
            dynamic_process_builders=dynamic,
            parallel_process_templates=parallel,
            **runtime_parameters,
        )


# ==================================================================================================
# validation and description
# ==================================================================================================
def _path(path: Iterable[str]) -> str:
    return " > ".join(path) or "<template>"


def _successors(template: Any) -> list[Any]:
    if isinstance(template, IProcessTemplateDAG):
        return list(template.next_process_dag)
    if isinstance(template, DefaultTaskTemplate):
        return list(template.next_task_dag)
    return []


def template_children(template: Any) -> list[Any]:
    """The static children of a template: a process's root task, a parallel group's members."""
    if isinstance(template, ParallelCompositeProcessTemplateDAG):
        return list(template.child_process_task_templates)
    if isinstance(template, DynamicProcessTemplateDAG):
        return []
    if isinstance(template, IProcessTemplateDAG):
        return [template.root_task_dag]
    if isinstance(template, ParallelCompositeTaskTemplate):
        return list(template.child_task_templates)
    return []


def template_successors(template: Any) -> list[Any]:
    """The successors of a template (``next_process_dag`` or ``next_task_dag``)."""
    return _successors(template)


def template_class(template: Any) -> Any:
    """The node class a template instantiates (its process type or task type)."""
    if isinstance(template, IProcessTemplateDAG):
        return template.process_type
    return getattr(template, "_type", None)


def template_node_type(template: Any) -> str:
    if isinstance(template, ParallelCompositeProcessTemplateDAG | ParallelCompositeTaskTemplate):
        return TaskType.PARALLEL_COMPOSITE.value
    if isinstance(template, IProcessTemplateDAG):
        return TaskType.SUB_DAG.value
    return TaskType.LEAF.value


def template_kind(template: Any) -> str:
    """The node kind a template produces (``"dynamic"`` for the placeholder, which produces none)."""
    if isinstance(template, DynamicProcessTemplateDAG):
        return "dynamic"
    if isinstance(template, ParallelCompositeProcessTemplateDAG):
        return NodeKind.PARALLEL.value
    if isinstance(template, IProcessTemplateDAG):
        return NodeKind.PROCESS.value
    kind = task_kind(template_class(template))
    return kind.value if kind is not None else "unknown"


def node_static_config(template: Any) -> dict[str, Any]:
    """The settings of a template node that do not depend on runtime parameters (JSON-ready)."""
    config: dict[str, Any] = {
        "template_name": template.name,
        "allow_skip_to": bool(getattr(template, "allow_skip_to", False)),
        "reprocess_on_message": bool(getattr(template, "reprocess_on_message", False)),
    }
    if isinstance(template, ParallelCompositeProcessTemplateDAG):
        config["operator"] = _operator(template.parallel_operator_type).value
    elif isinstance(template, IProcessTemplateDAG):
        config["max_run_duration"] = template.max_run_duration
    elif isinstance(template, ParallelCompositeTaskTemplate):
        config["operator"] = _operator(template.parallel_operator_type).value
    elif isinstance(template, DefaultKafkaTaskTemplate):
        config["topic"] = template.topic
        if task_kind(template._type) == NodeKind.LISTENER:
            config["concurrency"] = template.concurrency
            key = getattr(template._type, "correlatable_key", None)
            config["correlatable_key"] = key if key is None or isinstance(key, str) else str(key)
    elif isinstance(template, DefaultIntervalTaskTemplate):
        config["time_to_execute_key"] = template.time_to_execute_lookup_key
        config["time_to_force_complete_key"] = template.time_to_force_complete_lookup_key
        config["interval_execute_period_key"] = template.interval_execute_period_key
    elif isinstance(template, DefaultTriggerTaskTemplate):
        config["time_to_execute_key"] = template.time_to_execute_lookup_key
    return config


def check_template_header(template: Any) -> None:
    """Check a workflow template's own settings (not its graph)."""
    name = getattr(template, "name", None)
    where = repr(name) if name else "<unnamed template>"
    if not isinstance(name, str) or not name:
        raise InvalidTemplate(f"workflow template {where}: has no name")
    if not _is_subclass(template.template_type, ITemplateDAGInstance):
        raise InvalidTemplate(
            f"{name}: template type {_class_name(template.template_type)} is not a subclass of ITemplateDAGInstance"
        )
    policy = getattr(template, "failure_policy", "halt")
    if policy not in FAILURE_POLICIES:
        raise InvalidTemplate(f"{name}: failure_policy must be one of {FAILURE_POLICIES}, not {policy!r}")
    if template.root_process_dag is None:
        raise InvalidTemplate(f"{name}: has no root process (set_root was never called)")


def _check_duration(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidTemplate(f"{where}: max_run_duration must be a number of seconds >= 0, not {value!r}")


def check_node(template: Any, path: Sequence[str], *, creating: bool = False) -> None:
    """Check one template node's own settings; raise ``InvalidTemplate`` naming ``path``.

    With ``creating=True`` (materialisation) missing trigger/interval lookup keys are left to the
    creation itself, which reports them as ``InvalidTriggerTimeForTask`` as the original did.
    """
    where = _path(path)
    name = getattr(template, "name", None)
    if not isinstance(name, str) or not name:
        raise InvalidTemplate(f"{where}: {type(template).__name__} has no name")

    if isinstance(template, DynamicProcessTemplateDAG):
        _check_duration(template.max_run_duration, where)
        return
    if isinstance(template, ParallelCompositeProcessTemplateDAG):
        if not _is_subclass(template.process_type, ParallelCompositeTask):
            raise InvalidTemplate(
                f"{where}: parallel process group type {_class_name(template.process_type)} "
                "is not a subclass of ParallelCompositeTask"
            )
        _check_operator(template.parallel_operator_type, where)
        return
    if isinstance(template, IProcessTemplateDAG):
        process_type = template.process_type
        if not _is_subclass(process_type, IProcessTemplateDAGInstance):
            raise InvalidTemplate(
                f"{where}: process type {_class_name(process_type)} is not a subclass of IProcessTemplateDAGInstance"
            )
        if template.root_task_dag is None:
            raise InvalidTemplate(f"{where}: process has no root task (set_root_task was never called)")
        _check_duration(template.max_run_duration, where)
        return
    if not isinstance(template, DefaultTaskTemplate):
        raise InvalidTemplate(f"{where}: {type(template).__name__} is not a supported template class")

    task_type = template._type
    if not _is_subclass(task_type, ITask):
        raise InvalidTemplate(f"{where}: task type {_class_name(task_type)} is not a subclass of ITask")
    kind = task_kind(task_type)
    cls = _class_name(task_type)

    if isinstance(template, ParallelCompositeTaskTemplate):
        if kind != NodeKind.PARALLEL:
            raise InvalidTemplate(
                f"{where}: parallel group type {cls} is not a subclass of ParallelCompositeTask"
            )
        if not template.child_task_templates:
            raise InvalidTemplate(f"{where}: parallel group has zero children")
        _check_operator(template.parallel_operator_type, where)
        return
    if isinstance(template, DefaultKafkaTaskTemplate):
        if kind not in (NodeKind.COMMAND, NodeKind.LISTENER):
            raise InvalidTemplate(f"{where}: {cls} is neither a KafkaCommandTask nor a KafkaListenerTask")
        if not isinstance(template.topic, str) or not template.topic:
            raise InvalidTemplate(f"{where}: {kind.value} task has no topic (set_topic was never called)")
        if kind == NodeKind.LISTENER:
            concurrency = template.concurrency
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
                raise InvalidTemplate(
                    f"{where}: listener concurrency must be an int >= 1, not {concurrency!r}"
                )
        return
    if isinstance(template, DefaultIntervalTaskTemplate):
        if kind != NodeKind.INTERVAL:
            raise InvalidTemplate(f"{where}: interval task type {cls} is not a subclass of IntervalTask")
        if not creating:
            if not template.time_to_force_complete_lookup_key:
                raise InvalidTemplate(f"{where}: interval task has no time-to-force-complete lookup key")
            if not template.interval_execute_period_key:
                raise InvalidTemplate(f"{where}: interval task has no interval period lookup key")
        return
    if isinstance(template, DefaultTriggerTaskTemplate):
        if kind == NodeKind.INTERVAL:
            raise InvalidTemplate(
                f"{where}: {cls} is an IntervalTask, built without period or force-complete key "
                "(use IntervalTaskTemplateBuilder)"
            )
        if kind == NodeKind.MONITOR:
            raise InvalidTemplate(f"{where}: {cls} is a MonitoringTask; the engine creates monitors itself")
        if kind != NodeKind.TRIGGER:
            raise InvalidTemplate(f"{where}: trigger task type {cls} is not a subclass of TriggerTask")
        if not creating and not template.time_to_execute_lookup_key:
            raise InvalidTemplate(f"{where}: trigger task has no time-to-execute lookup key")
        return

    # A plain task template: an executor or a decision.
    if kind in (NodeKind.EXECUTOR, NodeKind.DECISION):
        return
    problems: dict[NodeKind, str] = {
        NodeKind.COMMAND: "command task without topic (use KafkaCommandTaskTemplateBuilder)",
        NodeKind.LISTENER: "listener task without topic (use KafkaListenerTaskTemplateBuilder)",
        NodeKind.TRIGGER: "trigger task without time-to-execute key (use TriggerTaskTemplateBuilder)",
        NodeKind.INTERVAL: "interval task without period or force-complete key (use IntervalTaskTemplateBuilder)",
        NodeKind.MONITOR: "monitoring task in a template (the engine creates monitors itself)",
        NodeKind.PARALLEL: "parallel group with zero children (use ParallelCompositeTaskTemplateBuilder)",
        NodeKind.PROCESS: "process class used as a task (use ProcessTemplateDagBuilder)",
    }
    problem = problems.get(kind, "not a task class") if kind is not None else "not a task class"
    raise InvalidTemplate(f"{where}: {cls}: {problem}")


def _check_operator(operator: Any, where: str) -> None:
    try:
        _operator(operator)
    except InvalidTemplate as exc:
        raise InvalidTemplate(f"{where}: {exc}") from None


class _GraphWalk:
    """Depth-first walk of a template graph that checks every node and describes it.

    A template object reached again on its own path is a cycle; reached again on another path it
    is shared (described once, referenced by key).
    """

    def __init__(self) -> None:
        self.keys: dict[int, str] = {}
        self.used_keys: set[str] = set()
        self.nodes: list[dict[str, Any]] = []
        self._alive: list[Any] = []  # keep objects alive so id() stays unique during the walk

    def _key(self, base: str) -> str:
        key, n = base, 1
        while key in self.used_keys:
            n += 1
            key = f"{base}#{n}"
        self.used_keys.add(key)
        return key

    def visit(self, template: Any, path: tuple[str, ...], on_path: frozenset[int], scope: str | None) -> str:
        if not isinstance(template, TaskTemplate):
            hint = (
                " (a builder given where a built template is expected: call .build())"
                if hasattr(template, "build")
                else ""
            )
            raise InvalidTemplate(f"{_path(path)}: dangling reference to {template!r}{hint}")
        here = (*path, str(template.name))
        if id(template) in on_path:
            raise InvalidTemplate(f"cycle: {_path(here)} is reached again on its own path")
        if id(template) in self.keys:
            return self.keys[id(template)]
        check_node(template, here)
        key = self._key(f"{scope}/{template.name}" if scope else str(template.name))
        self.keys[id(template)] = key
        self._alive.append(template)
        node: dict[str, Any] = {
            "key": key,
            "name": template.name,
            "node_type": template_node_type(template),
            "kind": template_kind(template),
            "task_class": None if template_class(template) is None else class_path(template_class(template)),
            "config": node_static_config(template),
            "next": [],
            "children": [],
        }
        self.nodes.append(node)
        inner = on_path | {id(template)}
        node["children"] = [self.visit(child, here, inner, key) for child in template_children(template)]
        node["next"] = [self.visit(successor, here, inner, scope) for successor in _successors(template)]
        return key


def validate_template(template: Any) -> None:
    """Validate a workflow template or a process-level template; raise ``InvalidTemplate``."""
    if isinstance(template, ITemplateDAG) and hasattr(template, "validate"):
        template.validate()
    elif isinstance(template, TaskTemplate):
        _GraphWalk().visit(template, (), frozenset(), None)
    else:
        raise InvalidTemplate(f"{template!r} is not a template (did the function return a builder?)")


# ==================================================================================================
# builders
# ==================================================================================================
class TaskTemplateBuilder:
    """Base of task builders: ``set_next`` appends a successor, ``set_allow_skip_to`` lets an
    out-of-order message jump to this task."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.name = "task"
        self.allow_skip_to = False
        self.reprocess_on_message = False
        self.task_dags: list[TaskTemplate] = []
        self._type: type[ITask[Any, Any]] | None = None

    def set_type(self, task_type: type[ITask[Any, Any]]) -> TaskTemplateBuilder:
        raise NotImplementedError

    def set_name(self, name: str) -> TaskTemplateBuilder:
        raise NotImplementedError

    def build(self) -> TaskTemplate:
        raise NotImplementedError

    def set_next(self, task_template: TaskTemplate) -> TaskTemplateBuilder:
        self.task_dags.append(task_template)
        return self

    def set_allow_skip_to(self, allow_skip_to: bool) -> TaskTemplateBuilder:
        self.allow_skip_to = allow_skip_to
        return self


class DefaultTaskTemplateBuilder(TaskTemplateBuilder):
    """Builds an executor (or decision) task; Kafka command/listener classes are refused."""

    def set_type(self, task_type: type[ITask[Any, Any]]) -> DefaultTaskTemplateBuilder:
        if not isinstance(task_type, type):
            raise InvalidTaskType(f"{type(self).__name__}.set_type: {task_type!r} is not a class")
        if issubclass(task_type, KafkaListenerTask | KafkaCommandTask):
            raise InvalidTaskType(
                f"{type(self).__name__}.set_type: {task_type.__qualname__} is a Kafka task; "
                "use KafkaCommandTaskTemplateBuilder or KafkaListenerTaskTemplateBuilder"
            )
        self._type = task_type
        return self

    def set_name(self, name: str) -> DefaultTaskTemplateBuilder:
        self.name = name
        return self

    def build(self) -> TaskTemplate:
        return DefaultTaskTemplate(
            app=self.app,
            type=self._type,  # type: ignore[arg-type]
            name=self.name,
            task_dag_template=list(self.task_dags),
            allow_skip_to=self.allow_skip_to,
            reprocess_on_message=self.reprocess_on_message,
        )


def _require(builder: Any, task_type: Any, base: type, label: str) -> None:
    if not _is_subclass(task_type, base):
        raise InvalidTaskType(
            f"{type(builder).__name__}.set_type: {_class_name(task_type)} is not a subclass of {label}"
        )


class ParallelCompositeTaskTemplateBuilder(DefaultTaskTemplateBuilder):
    """Builds a parallel task group starting with ``task_template`` repeated
    ``no_of_parallel_tasks`` times (each becomes its own node); ``add_parallel_task`` adds more."""

    def __init__(self, app: Any, no_of_parallel_tasks: int, task_template: TaskTemplate) -> None:
        super().__init__(app)
        self._type = ParallelCompositeTask
        self.parallel_tasks: list[TaskTemplate] = self.get_parallel_tasks_templates(
            no_of_parallel_tasks, task_template
        )
        self.operator_type = TaskOperator.JOIN_ALL

    def get_parallel_tasks_templates(
        self, no_of_parallel_tasks: int, task_template: TaskTemplate
    ) -> list[TaskTemplate]:
        return [task_template for _ in range(no_of_parallel_tasks)]

    def add_parallel_task(self, task_template: TaskTemplate) -> ParallelCompositeTaskTemplateBuilder:
        self.parallel_tasks.append(task_template)
        return self

    def set_task_operator(self, operator_type: TaskOperator) -> ParallelCompositeTaskTemplateBuilder:
        self.operator_type = _operator(operator_type)
        return self

    def build(self) -> TaskTemplate:
        return ParallelCompositeTaskTemplate(
            app=self.app,
            type=self._type,  # type: ignore[arg-type]
            name=self.name,
            task_dag_templates=list(self.task_dags),
            child_task_templates=list(self.parallel_tasks),
            allow_skip_to=self.allow_skip_to,
            reprocess_on_message=self.reprocess_on_message,
            parallel_operator_type=self.operator_type,
        )


class KafkaCommandTaskTemplateBuilder(DefaultTaskTemplateBuilder):
    """Builds a task that sends a command on a topic (``set_type`` needs a ``KafkaCommandTask``)."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._topic: str | None = None

    def set_type(self, task_type: type[ITask[Any, Any]]) -> KafkaCommandTaskTemplateBuilder:
        _require(self, task_type, KafkaCommandTask, "KafkaCommandTask")
        self._type = task_type
        return self

    def set_topic(self, topic: Any) -> KafkaCommandTaskTemplateBuilder:
        self._topic = _topic_name(topic)
        return self

    def build(self) -> TaskTemplate:
        return DefaultKafkaTaskTemplate(
            app=self.app,
            type=self._type,  # type: ignore[arg-type]
            name=self.name,
            topic=self._topic,
            task_dag_templates=list(self.task_dags),
            allow_skip_to=self.allow_skip_to,
        )


class KafkaListenerTaskTemplateBuilder(DefaultTaskTemplateBuilder):
    """Builds a task that waits for a correlated message on a topic (``set_type`` needs a
    ``KafkaListenerTask``). ``build()`` has no side effect: no consumer is registered."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._topic: str | None = None
        self._concurrency = 1

    def set_type(self, task_type: type[ITask[Any, Any]]) -> KafkaListenerTaskTemplateBuilder:
        _require(self, task_type, KafkaListenerTask, "KafkaListenerTask")
        self._type = task_type
        return self

    def set_topic(self, topic: Any) -> KafkaListenerTaskTemplateBuilder:
        self._topic = _topic_name(topic)
        return self

    def set_concurrency(self, concurrency: int) -> None:
        """Kept for compatibility (returns None, as the original); recorded on the template."""
        self._concurrency = concurrency

    def set_reprocess_on_message(self, reprocess_on_message: bool) -> KafkaListenerTaskTemplateBuilder:
        self.reprocess_on_message = reprocess_on_message
        return self

    def build(self) -> TaskTemplate:
        return DefaultKafkaTaskTemplate(
            app=self.app,
            type=self._type,  # type: ignore[arg-type]
            name=self.name,
            topic=self._topic,
            task_dag_templates=list(self.task_dags),
            allow_skip_to=self.allow_skip_to,
            reprocess_on_message=self.reprocess_on_message,
            concurrency=self._concurrency,
        )


class DecisionTaskTemplateBuilder(DefaultTaskTemplateBuilder):
    """Builds a decision task (``set_type`` needs a ``DecisionTask``); add branches with ``set_next``."""

    def set_type(self, task_type: type[ITask[Any, Any]]) -> DecisionTaskTemplateBuilder:
        _require(self, task_type, DecisionTask, "DecisionTask")
        self._type = task_type
        return self


class TriggerTaskTemplateBuilder(DefaultTaskTemplateBuilder):
    """Builds a trigger task (``set_type`` needs a ``TriggerTask``); the runtime parameter named by
    ``set_time_to_execute_lookup_key`` holds the epoch seconds to run at."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._time_to_execute_key: str | None = None

    def set_type(self, task_type: type[ITask[Any, Any]]) -> TriggerTaskTemplateBuilder:
        _require(self, task_type, TriggerTask, "TriggerTask")
        self._type = task_type
        return self

    def set_time_to_execute_lookup_key(self, key: str) -> TriggerTaskTemplateBuilder:
        self._time_to_execute_key = key
        return self

    def build(self) -> TaskTemplate:
        return DefaultTriggerTaskTemplate(
            app=self.app,
            type=self._type,  # type: ignore[arg-type]
            name=self.name,
            time_to_execute_key=self._time_to_execute_key,
            task_dag_templates=list(self.task_dags),
            allow_skip_to=self.allow_skip_to,
        )


class IntervalTaskTemplateBuilder(TriggerTaskTemplateBuilder):
    """Builds an interval task; the start key is optional, the force-complete and period keys are
    required."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._time_to_force_complete_key: str | None = None
        self._interval_execute_period_key: str | None = None

    def set_time_to_force_complete_lookup_key(self, key: str) -> IntervalTaskTemplateBuilder:
        self._time_to_force_complete_key = key
        return self

    def set_interval_execute_period_lookup_key(self, key: str) -> IntervalTaskTemplateBuilder:
        self._interval_execute_period_key = key
        return self

    def build(self) -> TaskTemplate:
        return DefaultIntervalTaskTemplate(
            app=self.app,
            type=self._type,  # type: ignore[arg-type]
            name=self.name,
            time_to_execute_key=self._time_to_execute_key,
            time_to_force_complete_key=self._time_to_force_complete_key,
            interval_execute_period_key=self._interval_execute_period_key,
            task_dag_templates=list(self.task_dags),
            allow_skip_to=self.allow_skip_to,
        )


class IProcessTemplateDAGBuilder:
    """Base of process builders."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.next_process_dag: list[TaskTemplate] = []

    def set_root_task(self, task: TaskTemplate) -> IProcessTemplateDAGBuilder:
        raise NotImplementedError

    def set_next_process(self, task: TaskTemplate) -> IProcessTemplateDAGBuilder:
        raise NotImplementedError

    def set_name(self, process_name: str) -> IProcessTemplateDAGBuilder:
        raise NotImplementedError

    def set_type(self, process_type: type[ITask[Any, Any]]) -> IProcessTemplateDAGBuilder:
        raise NotImplementedError

    def build(self) -> TaskTemplate:
        raise NotImplementedError


class ProcessTemplateDagBuilder(IProcessTemplateDAGBuilder):
    """Builds a process (default type ``DefaultProcessTemplateDAGInstance``)."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._name: str | None = None
        self._root_task: TaskTemplate | None = None
        self._process_type: type[ITask[Any, Any]] = DefaultProcessTemplateDAGInstance
        self._max_run_duration = 0
        self._checkpoint: str | None = None

    def set_checkpoint(self, checkpoint: str) -> ProcessTemplateDagBuilder:
        """``"process"``: run this process's consecutive executor tasks in one worker call and
        commit once (all run again after a crash); ``"task"`` (the default): commit every task."""
        self._checkpoint = _checkpoint(checkpoint)
        return self

    def set_root_task(self, task: TaskTemplate) -> ProcessTemplateDagBuilder:
        self._root_task = task
        return self

    def set_next_process(self, task: TaskTemplate) -> ProcessTemplateDagBuilder:
        self.next_process_dag.append(task)
        return self

    def set_name(self, process_name: str) -> ProcessTemplateDagBuilder:
        self._name = process_name
        return self

    def set_type(self, process_type: type[ITask[Any, Any]]) -> ProcessTemplateDagBuilder:
        self._process_type = process_type
        return self

    def set_max_run_duration(self, max_run_duration: int) -> ProcessTemplateDagBuilder:
        self._max_run_duration = max_run_duration
        return self

    def build(self) -> TaskTemplate:
        process = ProcessTemplateDAG(
            next_process_dag=list(self.next_process_dag),
            app=self.app,
            name=self._name,  # type: ignore[arg-type]
            process_type=self._process_type,
            root_task_dag=self._root_task,
            max_run_duration=self._max_run_duration,
        )
        process.checkpoint = self._checkpoint
        return process


class DynamicProcessTemplateDagBuilder(IProcessTemplateDAGBuilder):
    """Builds a dynamic process placeholder (it has no root task and no type of its own)."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._name: str | None = None
        self._max_run_duration = 0

    def set_root_task(self, task: TaskTemplate) -> DynamicProcessTemplateDagBuilder:
        raise NotImplementedError("a dynamic process has no root task: its processes come from builders")

    def set_type(self, process_type: type[ITask[Any, Any]]) -> DynamicProcessTemplateDagBuilder:
        raise NotImplementedError("a dynamic process has no type: its processes come from builders")

    def set_next_process(self, task: TaskTemplate) -> DynamicProcessTemplateDagBuilder:
        self.next_process_dag.append(task)
        return self

    def set_name(self, process_name: str) -> DynamicProcessTemplateDagBuilder:
        self._name = process_name
        return self

    def set_max_run_duration(self, max_run_duration: int) -> DynamicProcessTemplateDagBuilder:
        self._max_run_duration = max_run_duration
        return self

    def build(self) -> TaskTemplate:
        return DynamicProcessTemplateDAG(
            next_process_dag=list(self.next_process_dag),
            app=self.app,
            name=self._name,  # type: ignore[arg-type]
            max_run_duration=self._max_run_duration,
        )


class ParallelCompositeProcessTemplateDagBuilder(IProcessTemplateDAGBuilder):
    """Builds a parallel process group (default type ``ParallelCompositeTask``, operator JOIN_ALL);
    ``set_parallel_process_templates`` adds one child process."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._name: str | None = None
        self._process_type: type[ITask[Any, Any]] = ParallelCompositeTask
        self._operator = TaskOperator.JOIN_ALL
        self.parallel_process_templates: list[TaskTemplate] = []

    def set_parallel_operator_type(
        self, operator_type: TaskOperator
    ) -> ParallelCompositeProcessTemplateDagBuilder:
        self._operator = _operator(operator_type)
        return self

    def set_root_task(self, task: TaskTemplate) -> ParallelCompositeProcessTemplateDagBuilder:
        raise NotImplementedError("a parallel process group has no root task: add children instead")

    def set_max_run_duration(self, max_run_duration: int) -> ParallelCompositeProcessTemplateDagBuilder:
        raise NotImplementedError("a parallel process group has no max run duration of its own")

    def set_next_process(self, task: TaskTemplate) -> ParallelCompositeProcessTemplateDagBuilder:
        self.next_process_dag.append(task)
        return self

    def set_parallel_process_templates(
        self, task: TaskTemplate
    ) -> ParallelCompositeProcessTemplateDagBuilder:
        self.parallel_process_templates.append(task)
        return self

    def set_name(self, process_name: str) -> ParallelCompositeProcessTemplateDagBuilder:
        self._name = process_name
        return self

    def set_type(self, process_type: type[ITask[Any, Any]]) -> ParallelCompositeProcessTemplateDagBuilder:
        self._process_type = process_type
        return self

    def build(self) -> TaskTemplate:
        return ParallelCompositeProcessTemplateDAG(
            next_process_dag=list(self.next_process_dag),
            app=self.app,
            name=self._name,  # type: ignore[arg-type]
            process_type=self._process_type,
            child_process_task_templates=list(self.parallel_process_templates),
            parallel_operator_type=self._operator,
        )


class ITemplateDAGBuilder:
    """Base of workflow template builders."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def set_root(self, template: TaskTemplate) -> ITemplateDAGBuilder:
        raise NotImplementedError

    def set_name(self, name: str) -> ITemplateDAGBuilder:
        raise NotImplementedError

    def set_type(self, template_type: type[ITask[Any, Any]]) -> ITemplateDAGBuilder:
        raise NotImplementedError

    def build(self) -> ITemplateDAG:
        raise NotImplementedError


class DefaultTemplateBuilder(ITemplateDAGBuilder):
    """Builds a workflow template (default type ``DefaultTemplateDAGInstance``)."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._name: str | None = None
        self._root: TaskTemplate | None = None
        self._template_type: type[ITask[Any, Any]] = DefaultTemplateDAGInstance
        self._failure_policy: str | None = None
        self._checkpoint = "task"
        self._parameters: ParameterDeclaration | None = None

    def set_parameters(
        self, parameters: Sequence[Param] | Mapping[str, Any], *, allow_extra: bool = False
    ) -> DefaultTemplateBuilder:
        """Declare the runtime parameters: a list of :class:`Param` (``Param("order_id", str)``,
        ``Param("amount", float, default=0.0)``) or a dict (``{"order_id": str, "amount":
        {"type": float, "default": 0.0}}``). Creations are then checked against it; names not
        declared are refused unless ``allow_extra``. Without a call, anything is accepted."""
        self._parameters = ParameterDeclaration.of(parameters, allow_extra=allow_extra)
        return self

    def set_checkpoint(self, checkpoint: str) -> DefaultTemplateBuilder:
        """The default of every process of the workflow: ``"task"`` (commit after every task, the
        default) or ``"process"`` (commit once per run of consecutive executor tasks)."""
        self._checkpoint = _checkpoint(checkpoint)
        return self

    def set_root(self, template: TaskTemplate) -> DefaultTemplateBuilder:
        self._root = template
        return self

    def set_name(self, name: str) -> DefaultTemplateBuilder:
        self._name = name
        return self

    def set_type(self, template_type: type[ITask[Any, Any]]) -> DefaultTemplateBuilder:
        self._template_type = template_type
        return self

    def set_failure_policy(self, failure_policy: str) -> DefaultTemplateBuilder:
        """What a failed task does to the workflow: ``"halt"`` (it ends FAILURE, retryable) or
        ``"continue"`` (the chain goes on, as in the original)."""
        if failure_policy not in FAILURE_POLICIES:
            raise InvalidTemplate(f"failure_policy must be one of {FAILURE_POLICIES}, not {failure_policy!r}")
        self._failure_policy = failure_policy
        return self

    def build(self) -> TemplateDAG:
        return TemplateDAG(
            dag=self._root,
            name=self._name,  # type: ignore[arg-type]
            app=self.app,
            template_type=self._template_type,
            failure_policy=self._failure_policy,
            checkpoint=self._checkpoint,
            parameters=self._parameters,
        )


__all__ = [
    "DecisionTaskTemplateBuilder",
    "DefaultIntervalTaskTemplate",
    "DefaultKafkaTaskTemplate",
    "DefaultTaskTemplate",
    "DefaultTaskTemplateBuilder",
    "DefaultTemplateBuilder",
    "DefaultTriggerTaskTemplate",
    "DynamicProcessTemplateDAG",
    "DynamicProcessTemplateDagBuilder",
    "IDynamicProcessTemplateDAG",
    "IProcessTemplateDAG",
    "IProcessTemplateDAGBuilder",
    "ITemplateDAG",
    "ITemplateDAGBuilder",
    "IntervalTaskTemplateBuilder",
    "KafkaCommandTaskTemplateBuilder",
    "KafkaListenerTaskTemplateBuilder",
    "ParallelCompositeProcessTemplateDAG",
    "ParallelCompositeProcessTemplateDagBuilder",
    "ParallelCompositeTaskTemplate",
    "ParallelCompositeTaskTemplateBuilder",
    "ProcessTemplateDAG",
    "ProcessTemplateDagBuilder",
    "TaskTemplate",
    "TaskTemplateBuilder",
    "TemplateDAG",
    "validate_template",
]
