"""The demo's order workflow, registered like any Dagger template (dagger_django imports the
``workflows`` module of every installed app at start-up).

    payment     choose_payment ─┬─ card:     charge_card          (fails while card_declined is true)
                                └─ transfer: await_transfer       (a listener: waits for an event)
    fulfilment  ship_or_refund ─┬─ ship:     pack ║ notify  →  deliver   (a parallel group, then a timer)
                                └─ refund:   refund

Each decision runs exactly one of its branches: an order is either delivered or refunded, never
both. ``manage.py dagger_demo`` starts one order of each kind (config/demo/guide.py says which);
the README says how to add one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DecisionTask,
    DecisionTaskTemplateBuilder,
    ExecutorTask,
    KafkaListenerTask,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    Param,
    TaskOperator,
    TriggerTask,
    TriggerTaskTemplateBuilder,
)

TEMPLATE = "DemoOrderWorkflow"
#: The topic of the bank-transfer listener: a message ``{"order_id": ..., "reference": ...}``
#: from Kafka (the bridge) or from ``POST /api/dagger/events/`` completes it.
TRANSFER_TOPIC = "demo_bank_transfers"
#: How long each step pretends to work, so that the admin and the API show the workflow moving.
STEP_SECONDS = 0.3


class PaymentDeclined(Exception):
    """The demo card provider said no: the workflow halts (FAILURE) and can be retried."""


class ChoosePayment(DecisionTask):
    def evaluate(self, **runtime_parameters: Any) -> Any:
        card, transfer = self.next_dags  # in set_next order
        return transfer if runtime_parameters.get("payment") == "transfer" else card


class ChargeCard(ExecutorTask):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        await asyncio.sleep(STEP_SECONDS)
        if runtime_parameters.get("card_declined"):
            # No retries are declared (max_retries = 0): the failure halts the workflow at once,
            # and an operator fixes the cause and presses Retry (README: "A failure to fix").
            raise PaymentDeclined(
                f"card declined for {runtime_parameters['order_id']}: set the runtime parameter "
                "card_declined to false, then retry the workflow"
            )
        runtime_parameters["charged"] = runtime_parameters["amount"]
        # A real provider gets an idempotency key: a task runs at least once.
        runtime_parameters["payment_ref"] = f"card-{self.idempotency_key[:8]}"


class AwaitTransfer(KafkaListenerTask):
    """Waits, holding no worker, for the bank's message about this order."""

    correlatable_key = "order_id"  # a message whose payload has this order_id is for this listener

    def on_message(self, runtime_parameters: dict[str, Any], payload: Any) -> bool:
        runtime_parameters["charged"] = runtime_parameters["amount"]
        runtime_parameters["payment_ref"] = f"transfer-{payload.get('reference', 'unknown')}"
        return True  # done: the workflow walks on


class ShipOrRefund(DecisionTask):
    def evaluate(self, **runtime_parameters: Any) -> Any:
        ship, refund = self.next_dags  # in set_next order
        return refund if runtime_parameters.get("out_of_stock") else ship


class Pack(ExecutorTask):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        await asyncio.sleep(STEP_SECONDS)
        runtime_parameters["packed"] = True


class NotifyCustomer(ExecutorTask):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        await asyncio.sleep(STEP_SECONDS)
        runtime_parameters["notified"] = True


class Deliver(TriggerTask):
    """Runs once the clock reaches ``deliver_at`` (epoch seconds; 0, the default, is at once)."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["delivered"] = True


class Refund(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["refunded"] = runtime_parameters.get("charged", 0)


@Dagger.register_template(TEMPLATE)
def demo_order_workflow(template_name: str) -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)

    # payment: card or bank transfer
    charge = helper.generic_executor_task_builder(task_type=ChargeCard, name="charge_card").build()
    transfer = helper.generic_listener_task_builder(
        topic=TRANSFER_TOPIC, task_type=AwaitTransfer, process_name="await_transfer"
    ).build()
    choose = DecisionTaskTemplateBuilder(Dagger.app).set_type(ChoosePayment).set_name("choose_payment")
    choose.set_next(charge)
    choose.set_next(transfer)
    payment = helper.generic_process_builder(process_name="payment", root_task=choose.build())

    # fulfilment: ship (pack and notify in parallel, then deliver at deliver_at) or refund
    deliver = (
        TriggerTaskTemplateBuilder(Dagger.app)
        .set_type(Deliver)
        .set_name("deliver")
        .set_time_to_execute_lookup_key("deliver_at")
        .build()
    )
    pack = helper.generic_executor_task_builder(task_type=Pack, name="pack").build()
    notify = helper.generic_executor_task_builder(task_type=NotifyCustomer, name="notify").build()
    ship = ParallelCompositeTaskTemplateBuilder(Dagger.app, 1, pack)
    ship.add_parallel_task(notify)
    ship.set_type(ParallelCompositeTask).set_name("pack_and_notify").set_task_operator(TaskOperator.JOIN_ALL)
    ship.set_next(deliver)
    refund = helper.generic_executor_task_builder(task_type=Refund, name="refund").build()
    decide = DecisionTaskTemplateBuilder(Dagger.app).set_type(ShipOrRefund).set_name("ship_or_refund")
    decide.set_next(ship.build())
    decide.set_next(refund)
    fulfilment = helper.generic_process_builder(process_name="fulfilment", root_task=decide.build())

    return helper.generic_template(
        template_name=template_name,
        root_process=helper.build_and_link_processes([payment, fulfilment]),
        parameters=[
            Param("order_id", str, description="the business key"),
            Param("amount", float),
            Param("payment", str, default="card", description='"card" or "transfer"'),
            Param("card_declined", bool, default=False, description="the card payment fails while true"),
            Param("out_of_stock", bool, default=False, description="refund instead of shipping"),
            Param("deliver_at", float, default=0, description="epoch seconds; 0: deliver at once"),
        ],
        # The tasks add these as they go; only the inputs above are checked at creation.
        allow_extra_parameters=True,
    )
