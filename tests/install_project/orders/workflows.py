# orders/workflows.py — imported at start-up (each installed app's workflows module, like admin.py)
import logging

from dagger_django import DAGBuilderHelper, Dagger, ExecutorTask

logger = logging.getLogger(__name__)


async def charge(order_id: str, idempotency_key: str) -> str:
    """Stands for your payment provider's client. A task runs at least once: the provider must
    treat a second call with the same idempotency key as the first one."""
    return f"payment-{order_id}-{idempotency_key[:8]}"


def ship(order_id: str) -> None:
    """Stands for your shipping service's client."""
    logger.info("shipping order %s", order_id)


class ChargeCard(ExecutorTask):
    max_retries = 3  # new: retries with backoff on exceptions

    async def execute(self, runtime_parameters, workflow_instance=None):
        runtime_parameters["payment_ref"] = await charge(
            runtime_parameters["order_id"], idempotency_key=str(self.id)
        )


class Ship(ExecutorTask):
    def execute(self, runtime_parameters, workflow_instance=None):  # def or async def
        ship(runtime_parameters["order_id"])


@Dagger.register_template("OrderWorkflow")
def order_workflow(template_name):
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    charge_task = helper.generic_executor_task_builder(task_type=ChargeCard, name="charge")
    ship_task = helper.generic_executor_task_builder(task_type=Ship, name="ship")
    process = helper.generic_process_builder(
        process_name="order", root_task=helper.build_and_link_tasks([charge_task, ship_task])
    )
    return helper.generic_template(template_name=template_name, root_process=process.build())
