"""Small template factories for the engine tests, written with the seed's builder API."""

from __future__ import annotations

from typing import Any

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DecisionTaskTemplateBuilder,
    DefaultTemplateBuilder,
    ParallelCompositeProcessTemplateDagBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    TaskOperator,
)

from . import tasks

helper = DAGBuilderHelper(dagger_app=Dagger.app)


def task(cls: type, name: str) -> Any:
    return helper.generic_executor_task_builder(task_type=cls, name=name)


def chain(*pairs: tuple[type, str]) -> Any:
    return helper.build_and_link_tasks([task(cls, name) for cls, name in pairs])


def process(name: str, root: Any, **kwargs: Any) -> Any:
    return helper.generic_process_builder(process_name=name, root_task=root, **kwargs)


def template(name: str, *processes: Any, failure_policy: str | None = None) -> Any:
    root = helper.build_and_link_processes(list(processes))
    return helper.generic_template(template_name=name, root_process=root, failure_policy=failure_policy)


def linear(name: str, *pairs: tuple[type, str], failure_policy: str | None = None) -> Any:
    return template(name, process("main", chain(*pairs)), failure_policy=failure_policy)


def decision(name: str, decider: type = tasks.PickByParameter) -> Any:
    """main: decide -> {left -> left_after, right}; then a final process 'after'."""
    left = task(tasks.Record, "left")
    left.set_next(task(tasks.Record, "left_after").build())
    right = task(tasks.Record, "right").build()
    decide = DecisionTaskTemplateBuilder(Dagger.app).set_type(decider).set_name("decide")
    decide.set_next(left.build())
    decide.set_next(right)
    after = process("after", task(tasks.Record, "final").build())
    return template(name, process("main", decide.build()), after)


def parallel_tasks(name: str, operator: Any, *children: Any) -> Any:
    group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 1, children[0])
    for child in children[1:]:
        group.add_parallel_task(child)
    group.set_type(ParallelCompositeTask).set_name("group").set_task_operator(operator)
    group.set_next(task(tasks.Record, "joined").build())
    return template(name, process("main", group.build()))


def listener(name: str) -> Any:
    return helper.generic_listener_task_builder(
        topic="orders", task_type=tasks.Waiter, process_name=name
    ).build()


def parallel_processes(name: str, operator: Any, *processes: Any) -> Any:
    group = ParallelCompositeProcessTemplateDagBuilder(Dagger.app)
    for proc in processes:
        group.set_parallel_process_templates(proc.build())
    group.set_name("group").set_parallel_operator_type(operator).set_type(ParallelCompositeTask)
    tail = process("tail", task(tasks.Record, "tail").build())
    root = helper.build_and_link_processes([group, tail])
    return DefaultTemplateBuilder(Dagger.app).set_name(name).set_root(root).build()


JOIN_ALL = TaskOperator.JOIN_ALL
ATLEAST_ONE = TaskOperator.ATLEAST_ONE
