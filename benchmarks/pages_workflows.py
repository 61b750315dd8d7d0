"""The workflows ``benchmarks.pages`` seeds a million of: three templates whose prototypes end in
each status a page shows (a module of its own: a worker imports task classes by path)."""

from __future__ import annotations

from typing import Any

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    ExecutorTask,
    KafkaListenerTask,
    TriggerTaskTemplateBuilder,
)
from dagger_django.definitions.tasks import TriggerTask

ORDER, REFUND, NIGHTLY = "PagesOrder", "PagesRefund", "PagesNightly"
ORDER_TOPIC, REFUND_TOPIC = "pages_paid", "pages_refunded"


class Paid(KafkaListenerTask):
    correlatable_key = "order_id"

    def get_correlatable_key(self, payload: Any) -> Any:
        return ("order_id", payload["order_id"])

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters["amount"] = args[0].get("amount")
        return True


class Refunded(KafkaListenerTask):
    correlatable_key = "refund_id"

    def get_correlatable_key(self, payload: Any) -> Any:
        return ("refund_id", payload["refund_id"])

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True


class Step(ExecutorTask):
    """Records its name; raises while ``runtime_parameters["fail"]`` is true."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        if runtime_parameters.get("fail"):
            raise RuntimeError("card declined: insufficient funds (seeded failure)")
        runtime_parameters.setdefault("trace", []).append(self.task_name.rsplit(".", 1)[-1])


class Remind(TriggerTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["reminded"] = True


def _helper() -> DAGBuilderHelper:
    return DAGBuilderHelper(dagger_app=Dagger.app)


@Dagger.register_template(ORDER)
def order_template(name: str) -> Any:
    """P[main: paid(order_id) -> charge -> remind(at remind_at) -> ship]"""
    helper = _helper()
    remind = TriggerTaskTemplateBuilder(Dagger.app).set_type(Remind).set_name("remind")
    remind.set_time_to_execute_lookup_key("remind_at")
    tasks = [
        helper.generic_listener_task_builder(topic=ORDER_TOPIC, task_type=Paid, process_name="main"),
        helper.generic_executor_task_builder(task_type=Step, name="charge"),
        remind,
        helper.generic_executor_task_builder(task_type=Step, name="ship"),
    ]
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks(tasks)
    )
    return helper.generic_template(
        template_name=name, root_process=helper.build_and_link_processes([process])
    )


@Dagger.register_template(REFUND)
def refund_template(name: str) -> Any:
    """P[main: refunded(refund_id) -> credit -> notify]"""
    helper = _helper()
    tasks = [
        helper.generic_listener_task_builder(topic=REFUND_TOPIC, task_type=Refunded, process_name="main"),
        helper.generic_executor_task_builder(task_type=Step, name="credit"),
        helper.generic_executor_task_builder(task_type=Step, name="notify"),
    ]
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks(tasks)
    )
    return helper.generic_template(
        template_name=name, root_process=helper.build_and_link_processes([process])
    )


@Dagger.register_template(NIGHTLY)
def nightly_template(name: str) -> Any:
    """P[extract: a -> b] -> P[load: c]"""
    helper = _helper()
    extract = helper.generic_process_builder(
        process_name="extract",
        root_task=helper.build_and_link_tasks(
            [helper.generic_executor_task_builder(task_type=Step, name=n) for n in ("fetch", "transform")]
        ),
    )
    load = helper.generic_process_builder(
        process_name="load",
        root_task=helper.build_and_link_tasks(
            [helper.generic_executor_task_builder(task_type=Step, name="load")]
        ),
    )
    return helper.generic_template(
        template_name=name, root_process=helper.build_and_link_processes([extract, load])
    )
