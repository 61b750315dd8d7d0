"""Workflow shapes for the state-machine campaign, and the task classes they are made of.

A :class:`Shape` is a small value (processes of steps: tasks, parallel groups, a closing
decision) with a readable ``repr``, so a shrunk failing example names the workflow it built.
:func:`build` turns it into a template with the seed's builder API. The task classes take their
behaviour from :data:`CONTROL`, which the campaign sets before each step it runs: the same
template then succeeds, fails or raises depending on the interleaving hypothesis draws.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DecisionTask,
    DecisionTaskTemplateBuilder,
    ExecutorTask,
    IntervalTask,
    IntervalTaskTemplateBuilder,
    KafkaListenerTask,
    ParallelCompositeProcessTemplateDagBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    TaskStatus,
    TaskStatusEnum,
    TriggerTask,
    TriggerTaskTemplateBuilder,
)

helper = DAGBuilderHelper(dagger_app=Dagger.app)

#: The topic every campaign listener waits on, and the runtime parameter it correlates on.
TOPIC = "sm_events"
KEY = "sm_key"
#: Runtime parameters read by the time-driven tasks (epoch seconds, seconds).
RUN_AT, DEADLINE, PERIOD = "sm_run_at", "sm_deadline", "sm_period"

#: What a task does when it runs: complete, set its status to FAILURE, or raise.
MODES = ("ok", "fail", "raise")


@dataclass
class Control:
    """The behaviour of the campaign's user code for the step being run."""

    mode: str = "ok"
    #: The successor index a decision picks (None: no branch).
    branch: int | None = 0
    #: What an interval poll answers.
    ready: bool = False


CONTROL = Control()


def _act(task: Any) -> None:
    if CONTROL.mode == "raise":
        raise RuntimeError("campaign: the task raised")
    if CONTROL.mode == "fail":
        task.status = TaskStatus(code=TaskStatusEnum.FAILURE.name, value=TaskStatusEnum.FAILURE.value)


class Chaos(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        _act(self)


class ChaosRetried(Chaos):
    """Raising is retried once after 5 s (a retry timer)."""

    max_retries = 1
    retry_backoff = 5.0


class ChaosTrigger(TriggerTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        _act(self)


class ChaosInterval(IntervalTask):
    def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:
        if CONTROL.mode == "raise":
            raise RuntimeError("campaign: the poll raised")
        return CONTROL.ready

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        _act(self)


class ChaosDecision(DecisionTask):
    def evaluate(self, **kwargs: Any) -> Any:
        if CONTROL.mode == "raise":
            raise RuntimeError("campaign: the decision raised")
        branch = CONTROL.branch
        return None if branch is None else self.next_dags[branch % len(self.next_dags)]


class ChaosListener(KafkaListenerTask):
    """Correlates on ``sm_key``; a payload says whether it raises and whether it completes."""

    correlatable_key = KEY

    def get_correlatable_key(self, payload: Any) -> Any:
        return (KEY, payload[KEY])

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        payload = args[0]
        if payload.get("raise"):
            raise RuntimeError("campaign: on_message raised")
        return bool(payload.get("done", True))

    def stop(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        STOP_HOOKS.append(str(self.task_name))


#: Names of listeners whose stop hook ran (the campaign only counts them).
STOP_HOOKS: list[str] = []


# -- shapes -----------------------------------------------------------------------------------------
#: Leaf kinds: executor, executor retried once, listener, trigger, interval.
LEAVES = ("exec", "retried", "listen", "trigger", "interval")


@dataclass(frozen=True)
class Group:
    """A parallel group of single-task branches."""

    operator: str  # "JOIN_ALL" or "ATLEAST_ONE"
    branches: tuple[str, ...]


@dataclass(frozen=True)
class Process:
    steps: tuple[str | Group, ...]
    #: A decision between these single-task branches closes the process (empty: no decision).
    decision: tuple[str, ...] = ()
    #: ``max_run_duration`` in seconds (0: none).
    deadline: int = 0


@dataclass(frozen=True)
class ProcessGroup:
    """A parallel group of processes (a process-level group)."""

    operator: str
    processes: tuple[Process, ...]


@dataclass(frozen=True)
class Shape:
    processes: tuple[Process | ProcessGroup, ...]
    policy: str = "halt"

    def name(self) -> str:
        """A template name per distinct shape (its version is pinned by the graph's digest)."""
        return "sm-" + hashlib.sha1(repr(self).encode()).hexdigest()[:12]


class _Names:
    def __init__(self) -> None:
        self.n = 0

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


def _leaf(kind: str, names: _Names) -> Any:
    name = names.next(kind[0])
    if kind == "exec":
        return helper.generic_executor_task_builder(task_type=Chaos, name=name)
    if kind == "retried":
        return helper.generic_executor_task_builder(task_type=ChaosRetried, name=name)
    if kind == "listen":
        return helper.generic_listener_task_builder(topic=TOPIC, task_type=ChaosListener, process_name=name)
    if kind == "trigger":
        return (
            TriggerTaskTemplateBuilder(Dagger.app)
            .set_type(ChaosTrigger)
            .set_name(name)
            .set_time_to_execute_lookup_key(RUN_AT)
        )
    if kind == "interval":
        builder = IntervalTaskTemplateBuilder(Dagger.app).set_type(ChaosInterval).set_name(name)
        builder.set_time_to_force_complete_lookup_key(DEADLINE)
        builder.set_interval_execute_period_lookup_key(PERIOD)
        return builder
    raise ValueError(kind)


def _group(group: Group, names: _Names) -> Any:
    children = [_leaf(kind, names).build() for kind in group.branches]
    builder = ParallelCompositeTaskTemplateBuilder(Dagger.app, 1, children[0])
    for child in children[1:]:
        builder.add_parallel_task(child)
    return builder.set_type(ParallelCompositeTask).set_name(names.next("g")).set_task_operator(group.operator)


def _process(spec: Process, names: _Names) -> Any:
    builders = [_group(s, names) if isinstance(s, Group) else _leaf(s, names) for s in spec.steps]
    if spec.decision:
        decide = DecisionTaskTemplateBuilder(Dagger.app).set_type(ChaosDecision).set_name(names.next("d"))
        for kind in spec.decision:
            decide.set_next(_leaf(kind, names).build())
        builders.append(decide)
    root = helper.build_and_link_tasks(builders)
    return helper.generic_process_builder(
        process_name=names.next("p"), root_task=root, max_run_duration=spec.deadline
    )


def _process_group(spec: ProcessGroup, names: _Names) -> Any:
    builder = ParallelCompositeProcessTemplateDagBuilder(Dagger.app)
    for process in spec.processes:
        builder.set_parallel_process_templates(_process(process, names).build())
    builder.set_name(names.next("pg")).set_parallel_operator_type(spec.operator)
    return builder.set_type(ParallelCompositeTask)


def build(shape: Shape) -> Any:
    names = _Names()
    root = helper.build_and_link_processes(
        [
            _process_group(p, names) if isinstance(p, ProcessGroup) else _process(p, names)
            for p in shape.processes
        ]
    )
    return helper.generic_template(template_name=shape.name(), root_process=root, failure_policy=shape.policy)


def anchor() -> Any:
    """A template to register so that routing knows the campaign's topic and listener class."""
    return build(Shape(processes=(Process(steps=("listen",)),)))
