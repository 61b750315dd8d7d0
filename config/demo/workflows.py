"""A demo order workflow, registered like any Dagger template.

Payment (charge, then decide: ship or refund) -> Fulfilment (pack and notify in parallel) ->
Delivery. Each step sleeps a little so that the admin and API show it moving.
"""

from __future__ import annotations

import random
import time
from typing import Any

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DecisionTask,
    DecisionTaskTemplateBuilder,
    DefaultProcessTemplateDAGInstance,
    ExecutorTask,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    TaskOperator,
)

STEP_SECONDS = 0.5


class ChargeCard(ExecutorTask):
    max_retries = 2
    retry_backoff = 0.5

    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        time.sleep(STEP_SECONDS)
        runtime_parameters["charged"] = runtime_parameters.get("amount", 0)
        runtime_parameters["payment_ref"] = f"pay-{random.randint(1000, 9999)}"


class ShipOrRefund(DecisionTask):
    def evaluate(self, **runtime_parameters: Any) -> Any:
        ship, refund = self.next_dags
        return refund if runtime_parameters.get("out_of_stock") else ship


class ConfirmShipping(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        time.sleep(STEP_SECONDS)
        runtime_parameters["shipping_confirmed"] = True


class Refund(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["refunded"] = runtime_parameters.get("charged", 0)


class Pack(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        time.sleep(STEP_SECONDS)
        runtime_parameters["packed"] = True


class NotifyCustomer(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        time.sleep(STEP_SECONDS)
        runtime_parameters["notified"] = True


class Deliver(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        time.sleep(STEP_SECONDS)
        runtime_parameters["delivered"] = True


@Dagger.register_template("DemoOrderWorkflow")
def demo_order_workflow(template_name: str) -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)

    ship = helper.generic_executor_task_builder(task_type=ConfirmShipping, name="confirm_shipping").build()
    refund = helper.generic_executor_task_builder(task_type=Refund, name="refund").build()
    decide = DecisionTaskTemplateBuilder(Dagger.app).set_type(ShipOrRefund).set_name("ship_or_refund")
    decide.set_next(ship)
    decide.set_next(refund)
    charge = helper.generic_executor_task_builder(task_type=ChargeCard, name="charge_card")
    charge.set_next(decide.build())
    payment = helper.generic_process_builder(process_name="payment", root_task=charge.build())

    pack = helper.generic_executor_task_builder(task_type=Pack, name="pack").build()
    notify = helper.generic_executor_task_builder(task_type=NotifyCustomer, name="notify").build()
    both = ParallelCompositeTaskTemplateBuilder(Dagger.app, 1, pack)
    both.add_parallel_task(notify)
    both.set_type(ParallelCompositeTask).set_name("pack_and_notify").set_task_operator(TaskOperator.JOIN_ALL)
    fulfilment = helper.generic_process_builder(process_name="fulfilment", root_task=both.build())

    deliver = helper.generic_executor_task_builder(task_type=Deliver, name="deliver").build()
    delivery = helper.generic_process_builder(
        process_name="delivery", root_task=deliver, process_type=DefaultProcessTemplateDAGInstance
    )

    root = helper.build_and_link_processes([payment, fulfilment, delivery])
    return helper.generic_template(template_name=template_name, root_process=root)
