"""``DAGBuilderHelper``: the original's shortcuts for the common shapes, with its naming scheme.

Task builders are named ``"<name>_executor_task"``, ``"<process_name>_command_task"`` and
``"<process_name>_listener_task"``, so a task's dotted name reads e.g.
``PizzaWorkflow.Order.Order_command_task``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import InvalidTemplate
from .params import Param
from .registry import Dagger
from .tasks import DefaultProcessTemplateDAGInstance, DefaultTemplateDAGInstance, ITask
from .templates import (
    DefaultTaskTemplateBuilder,
    DefaultTemplateBuilder,
    DynamicProcessTemplateDagBuilder,
    IProcessTemplateDAGBuilder,
    ITemplateDAG,
    KafkaCommandTaskTemplateBuilder,
    KafkaListenerTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TaskTemplate,
    TaskTemplateBuilder,
)


class DAGBuilderHelper:
    """Builds and links the usual building blocks of a workflow definition."""

    def __init__(self, dagger_app: Any) -> None:
        self.app = dagger_app

    def build_and_link_tasks(self, tasks_builder_list: Sequence[TaskTemplateBuilder]) -> TaskTemplate:
        """Build the builders into a chain (each followed by the next); returns the first template."""
        if not tasks_builder_list:
            raise InvalidTemplate("build_and_link_tasks: no task builders given")
        template = tasks_builder_list[-1].build()
        for builder in reversed(tasks_builder_list[:-1]):
            builder.set_next(template)
            template = builder.build()
        return template

    def build_and_link_processes(
        self, process_builder_list: Sequence[IProcessTemplateDAGBuilder]
    ) -> TaskTemplate:
        """Build the process builders into a chain; returns the first process template."""
        if not process_builder_list:
            raise InvalidTemplate("build_and_link_processes: no process builders given")
        template = process_builder_list[-1].build()
        for builder in reversed(process_builder_list[:-1]):
            builder.set_next_process(template)
            template = builder.build()
        return template

    def generic_process_builder(
        self,
        *,
        process_name: str,
        root_task: TaskTemplate,
        process_type: type[ITask[Any, Any]] = DefaultProcessTemplateDAGInstance,
        max_run_duration: int = 0,
        checkpoint: str | None = None,
    ) -> ProcessTemplateDagBuilder:
        builder = (
            ProcessTemplateDagBuilder(self.app)
            .set_name(process_name)
            .set_root_task(root_task)
            .set_type(process_type)
            .set_max_run_duration(max_run_duration)
        )
        return builder if checkpoint is None else builder.set_checkpoint(checkpoint)

    def generic_dynamic_process_builder(
        self, *, name: str, max_run_duration: int = 0
    ) -> DynamicProcessTemplateDagBuilder:
        return (
            DynamicProcessTemplateDagBuilder(self.app).set_name(name).set_max_run_duration(max_run_duration)
        )

    def generic_executor_task_builder(
        self, *, task_type: type[ITask[Any, Any]], name: str, allow_skip_to: bool = False
    ) -> DefaultTaskTemplateBuilder:
        builder = DefaultTaskTemplateBuilder(self.app).set_name(f"{name}_executor_task").set_type(task_type)
        builder.set_allow_skip_to(allow_skip_to)
        return builder

    def generic_command_task_builder(
        self,
        *,
        topic: str,
        task_type: type[ITask[Any, Any]],
        process_name: str,
        key_type: Any = None,
        value_type: Any = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> KafkaCommandTaskTemplateBuilder:
        command_topic = Dagger.create_topic(
            topic,
            key_type=key_type,
            value_type=value_type,
            key_serializer=key_serializer,
            value_serializer=value_serializer,
        )
        builder = KafkaCommandTaskTemplateBuilder(self.app)
        builder.set_topic(command_topic)
        builder.set_type(task_type)
        builder.set_name(f"{process_name}_command_task")
        return builder

    def generic_listener_task_builder(
        self,
        *,
        topic: str,
        task_type: type[ITask[Any, Any]],
        process_name: str,
        allow_skip_to: bool = False,
        concurrency: int = 1,
        reprocess_on_message: bool = False,
        key_type: Any = None,
        value_type: Any = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> KafkaListenerTaskTemplateBuilder:
        listener_topic = Dagger.create_topic(
            topic,
            key_type=key_type,
            value_type=value_type,
            key_serializer=key_serializer,
            value_serializer=value_serializer,
        )
        builder = KafkaListenerTaskTemplateBuilder(self.app)
        builder.set_topic(listener_topic)
        builder.set_type(task_type)
        builder.set_name(f"{process_name}_listener_task")
        builder.set_allow_skip_to(allow_skip_to)
        builder.set_concurrency(concurrency)
        builder.set_reprocess_on_message(reprocess_on_message)
        return builder

    def generic_template(
        self,
        *,
        template_name: str,
        root_process: TaskTemplate,
        template_type: type[ITask[Any, Any]] = DefaultTemplateDAGInstance,
        failure_policy: str | None = None,
        checkpoint: str = "task",
        parameters: Sequence[Param] | Mapping[str, Any] | None = None,
        allow_extra_parameters: bool = False,
    ) -> ITemplateDAG:
        """A built workflow template; ``failure_policy`` (``"halt"``/``"continue"``),
        ``checkpoint`` (``"task"``/``"process"``, docs/execution-model.md) and ``parameters``
        (declared runtime parameters, :meth:`DefaultTemplateBuilder.set_parameters`) are new."""
        builder = (
            DefaultTemplateBuilder(self.app)
            .set_name(template_name)
            .set_type(template_type)
            .set_root(root_process)
        )
        if failure_policy is not None:
            builder.set_failure_policy(failure_policy)
        if parameters is not None:
            builder.set_parameters(parameters, allow_extra=allow_extra_parameters)
        elif allow_extra_parameters:
            raise InvalidTemplate("allow_extra_parameters needs declared parameters")
        return builder.set_checkpoint(checkpoint).build()


__all__ = ["DAGBuilderHelper"]
