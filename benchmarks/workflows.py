"""What the benchmark workloads run: a 3-step dagger workflow and the equivalent bare Celery chain.

Both do the same trivial work per step (append the step's name to a list), so the difference
between them is the cost of durability: dagger writes every transition to PostgreSQL, the bare
chain keeps its state only in broker messages.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from dagger_django import DAGBuilderHelper, Dagger, ExecutorTask


class Step(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(self.task_name.rsplit(".", 1)[-1])


def linear_template(name: str = "BenchLinear", steps: int = 3, checkpoint: str = "task") -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    tasks = [helper.generic_executor_task_builder(task_type=Step, name=f"s{i}") for i in range(steps)]
    root = helper.build_and_link_tasks(tasks)
    process = helper.generic_process_builder(process_name="main", root_task=root)
    return helper.generic_template(template_name=name, root_process=process.build(), checkpoint=checkpoint)


# -- the bare Celery chain ----------------------------------------------------------------------------
@shared_task(name="benchmarks.chain_step", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def chain_step(payload: dict[str, Any], name: str, last: bool = False) -> dict[str, Any]:
    payload.setdefault("trace", []).append(name)
    if last:
        from .redis_marks import mark_done

        mark_done(payload["run"], payload["t0"], time.time())
    return payload
