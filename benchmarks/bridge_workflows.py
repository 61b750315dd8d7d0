"""The workflow of the bridge benchmark (a module of its own: the worker imports its classes by path)."""

from __future__ import annotations

import time
from typing import Any

from dagger_django import DAGBuilderHelper, Dagger, ExecutorTask, KafkaListenerTask

TOPIC = "bench_ready"
TEMPLATE = "BenchBridge"


# P[main: listener(order_id) -> next] ---------------------------------------------------------
class BenchReady(KafkaListenerTask):
    correlatable_key = "order_id"

    def get_correlatable_key(self, payload: Any) -> Any:
        return ("order_id", payload["order_id"])

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters["sent_at"] = args[0].get("sent_at")
        return True


class BenchNext(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["next_at"] = time.time()


@Dagger.register_template(TEMPLATE)
def bench_template(name: str) -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    listen = helper.generic_listener_task_builder(topic=TOPIC, task_type=BenchReady, process_name="main")
    after = helper.generic_executor_task_builder(task_type=BenchNext, name="next")
    root = helper.build_and_link_tasks([listen, after])
    process = helper.generic_process_builder(process_name="main", root_task=root)
    return helper.generic_template(
        template_name=name, root_process=helper.build_and_link_processes([process])
    )
