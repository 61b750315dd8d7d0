"""A workflow module written as a Dagger 0.2.6 user writes one, ported by changing its imports.

Everything below is what a 0.2.6 module looks like (``async def`` hooks, topics declared with
``key_type=bytes, value_type=bytes`` and listeners that ``json.loads`` their payload, templates
made with the builder classes and registered by decorators); only the imports are dagger_django's.
The tests drive these templates through a real Kafka broker, bridge and Celery worker, and through
``POST events/``; the bridge imports this module (``--import tests.porting.workflows``) and the
worker imports its task classes by path.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from dagger_django import (
    AerospikeConfig,
    DAGBuilderHelper,
    Dagger,
    DecisionTask,
    DecisionTaskTemplateBuilder,
    DefaultMonitoringTask,
    DefaultProcessTemplateDAGInstance,
    DefaultTaskTemplateBuilder,
    DefaultTemplateBuilder,
    DefaultTemplateDAGInstance,
    DynamicProcessTemplateDagBuilder,
    ExecutorTask,
    IntervalTask,
    IntervalTaskTemplateBuilder,
    IProcessTemplateDAG,
    ITask,
    ITemplateDAG,
    KafkaCommandTask,
    KafkaCommandTaskTemplateBuilder,
    KafkaListenerTask,
    KafkaListenerTaskTemplateBuilder,
    MonitoredProcessTemplateDAGInstance,
    MonitoringTask,
    ParallelCompositeProcessTemplateDagBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TaskLookupKey,
    TaskOperator,
    TriggerTask,
    TriggerTaskTemplateBuilder,
)

logger = logging.getLogger(__name__)

#: Topics of these workflows (the tests create them on the broker; the bridge consumes them).
ORDERS_TOPIC = "port_orders"  # commands, value_type=str
READY_TOPIC = "port_ready"  # pizza ready, bytes
PAYMENT_TOPIC = "port_payment"  # payment results, bytes
BOX_TOPIC = "port_box"  # parallel branch listener, bytes
SIMPLE_TOPIC = "port_simple"  # the on-the-fly workflow's listener, bytes
CANCELLED_TOPIC = "port_cancelled"  # what stop hooks send
LISTENER_TOPICS = [READY_TOPIC, PAYMENT_TOPIC, BOX_TOPIC, SIMPLE_TOPIC]
ALL_TOPICS = [ORDERS_TOPIC, CANCELLED_TOPIC, *LISTENER_TOPICS]

# The 0.2.6 configuration module, unchanged: the Aerospike settings are accepted and ignored.
aerospike_config = AerospikeConfig(
    HOSTS=[("aerospike", 3000)], POLICIES={}, NAMESPACE="test", USERNAME="", PASSWORD="", TTL=-1, KWARGS=None
)
# No broker here: a Dagger(broker=...) would override the Kafka servers of the test settings.
workflow_engine = Dagger.app or Dagger(aerospike_config=aerospike_config)

orders_topic = Dagger.create_topic(ORDERS_TOPIC, key_type=bytes, value_type=str)
cancelled_topic = Dagger.create_topic(CANCELLED_TOPIC, key_type=bytes, value_type=str)


# -- the pizza workflow: a command and a listener whose topic carries bytes --------------------------
class OrderCommandTask(KafkaCommandTask[str, str]):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        payload = {
            "order_id": runtime_parameters["order_id"],
            "customer_id": runtime_parameters["customer_id"],
            "pizza_type": runtime_parameters["pizza_type"],
        }
        await workflow_engine.topics[self.topic].send(value=json.dumps(payload))


class PizzaWaitForReadyListener(KafkaListenerTask[str, str]):
    correlatable_key = "order_id"

    async def get_correlatable_keys_from_payload(self, payload: Any) -> list[TaskLookupKey]:
        tpayload = json.loads(payload)
        return [(self.correlatable_key, tpayload[self.correlatable_key])]

    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        message = json.loads(*args)
        runtime_parameters["oven"] = message.get("oven")
        runtime_parameters["payload_type"] = type(args[0]).__name__
        return True


class DeliveryExecutor(ExecutorTask[str, str]):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["delivered"] = True


def pizza_ordering_process(process_name: str = "Order") -> Any:
    dag_builder = DAGBuilderHelper(dagger_app=workflow_engine)
    root_task = dag_builder.build_and_link_tasks(
        [
            dag_builder.generic_command_task_builder(
                topic=ORDERS_TOPIC, task_type=OrderCommandTask, process_name=process_name
            ),
            dag_builder.generic_listener_task_builder(
                topic=READY_TOPIC, task_type=PizzaWaitForReadyListener, process_name=process_name
            ),
        ]
    )
    return dag_builder.generic_process_builder(process_name=process_name, root_task=root_task)


def pizza_delivery_process(process_name: str = "Delivery") -> Any:
    dag_builder = DAGBuilderHelper(dagger_app=workflow_engine)
    root_task = dag_builder.build_and_link_tasks(
        [dag_builder.generic_executor_task_builder(task_type=DeliveryExecutor, name=process_name)]
    )
    return dag_builder.generic_process_builder(process_name=process_name, root_task=root_task)


@Dagger.register_template("PortPizzaWorkflow")
def register_pizza_workflow(template_name: str) -> ITemplateDAG:
    Dagger.create_topic(READY_TOPIC, key_type=bytes, value_type=bytes)
    dag_builder_helper = DAGBuilderHelper(workflow_engine)
    processes = dag_builder_helper.build_and_link_processes(
        [pizza_ordering_process("Order"), pizza_delivery_process("Delivery")]
    )
    return dag_builder_helper.generic_template(template_name=template_name, root_process=processes)


# -- payment: a command, a decision, then a listener (bytes) ------------------------------------------
class PaymentCommandTask(KafkaCommandTask[str, str]):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        await workflow_engine.topics[self.topic].send(
            key=runtime_parameters["order_id"], value=json.dumps({"charge": runtime_parameters["order_id"]})
        )


class PaymentDecisionTask(DecisionTask[str, str]):
    async def evaluate(self, **kwargs: Any) -> Any:
        for task_id in self.next_dags:
            return task_id
        return None


class PaymentKafkaListenerTask(KafkaListenerTask[str, str]):
    correlatable_key = "order_id"

    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        new_params = json.loads(*args)
        runtime_parameters["box_id"] = new_params.get("box_id", None)
        return True

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        tpayload = json.loads(payload)
        return self.correlatable_key, tpayload[self.correlatable_key]


@Dagger.register_template("PortPaymentWorkflow")
def register_payment_workflow(template_name: str) -> ITemplateDAG:
    payment_status_topic = Dagger.create_topic(PAYMENT_TOPIC, key_type=bytes, value_type=bytes)
    listener = KafkaListenerTaskTemplateBuilder(Dagger.app)
    listener.set_topic(payment_status_topic)
    listener.set_type(PaymentKafkaListenerTask)
    listener.set_name("PAYMENT_LISTENER_TASK")
    listener_template = listener.build()

    decision = DecisionTaskTemplateBuilder(Dagger.app)
    decision.set_type(PaymentDecisionTask)
    decision.set_name("PAYMENT_DECISION_TASK")
    decision.set_next(listener_template)
    decision_template = decision.build()

    command = KafkaCommandTaskTemplateBuilder(Dagger.app)
    command.set_topic(orders_topic)
    command.set_type(PaymentCommandTask)
    command.set_name("PAYMENT_COMMAND_TASK")
    command.set_next(decision_template)
    command_template = command.build()

    payment_process = ProcessTemplateDagBuilder(Dagger.app)
    payment_process.set_name("PAYMENT")
    payment_process.set_root_task(command_template)
    payment_process.set_type(DefaultProcessTemplateDAGInstance)

    template_builder = DefaultTemplateBuilder(Dagger.app)
    template_builder.set_name(template_name)
    template_builder.set_type(DefaultTemplateDAGInstance)
    template_builder.set_root(payment_process.build())
    return template_builder.build()


# -- fulfilment: a monitored process with an interval task and a trigger task --------------------------
class FulfillmentIntervalTask(IntervalTask[str, str]):
    async def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:
        runtime_parameters["count"] = runtime_parameters.get("count", 0) + 1
        return runtime_parameters["count"] == 2

    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["polled"] = runtime_parameters["count"]


class FulfillmentTriggerTask(TriggerTask[str, str]):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["triggered_at"] = self.time_to_execute


class LateOrderMonitoringTask(DefaultMonitoringTask):
    async def process_monitored_task(self, monitored_task: ITask[Any, Any], workflow_instance: Any) -> None:
        workflow_instance.runtime_parameters["tagged_late"] = str(self.monitored_task_id)


class FulfillmentMonitoringProcessDAGInstance(MonitoredProcessTemplateDAGInstance):
    def get_monitoring_task_type(self) -> type[MonitoringTask[Any, Any]]:
        return LateOrderMonitoringTask


@Dagger.register_template("PortFulfillmentWorkflow")
def register_fulfillment_workflow(template_name: str) -> ITemplateDAG:
    trigger = TriggerTaskTemplateBuilder(Dagger.app)
    trigger.set_time_to_execute_lookup_key("DEADLINE")
    trigger.set_type(FulfillmentTriggerTask)
    trigger.set_name("FULFILLMENT_TRIGGER_TASK")
    trigger_template = trigger.build()

    interval = IntervalTaskTemplateBuilder(Dagger.app)
    interval.set_time_to_force_complete_lookup_key("DEADLINE")
    interval.set_interval_execute_period_lookup_key("interval")
    interval.set_next(trigger_template)
    interval.set_type(FulfillmentIntervalTask)
    interval.set_name("FULFILLMENT_INTERVAL_TASK")

    process = ProcessTemplateDagBuilder(Dagger.app)
    process.set_name("FULFILLMENT")
    process.set_root_task(interval.build())
    process.set_type(FulfillmentMonitoringProcessDAGInstance)

    template_builder = DefaultTemplateBuilder(Dagger.app)
    template_builder.set_name(template_name)
    template_builder.set_type(DefaultTemplateDAGInstance)
    template_builder.set_root(process.build())
    return template_builder.build()


# -- shipping: dynamic processes, parallel processes, a parallel task group, dynamic copies -------------
class Noopexecutor(ExecutorTask[str, str]):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        logger.info("no-op %s", self.task_name)


class PreprocessExecutor(ExecutorTask[str, str]):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["preprocessed"] = runtime_parameters.get("preprocessed", 0) + 1


class ShippingExecutor(ExecutorTask[str, str]):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        logger.info("shipping %s", runtime_parameters["order_id"])


class NoopKafkaListenerTask(KafkaListenerTask[str, str]):
    correlatable_key = "box_id"

    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        tpayload = json.loads(payload)
        return self.correlatable_key, tpayload[self.correlatable_key]


def _executor(name: str, task_type: type) -> Any:
    builder = DefaultTaskTemplateBuilder(Dagger.app)
    builder.set_name(name)
    builder.set_type(task_type)
    return builder.build()


preprocess_executor_task_template = _executor("order_preprocess_executor", PreprocessExecutor)
shipping_executor_task_template = _executor("shipping_executor", ShippingExecutor)


@Dagger.register_template("PortShippingWorkflow")
def register_shipping_workflow(template_name: str) -> ITemplateDAG:
    box_topic = Dagger.create_topic(BOX_TOPIC, key_type=bytes, value_type=bytes)
    noop_executor = _executor("noop_executor", Noopexecutor)

    box_listener = KafkaListenerTaskTemplateBuilder(Dagger.app)
    box_listener.set_topic(box_topic)
    box_listener.set_type(NoopKafkaListenerTask)
    box_listener.set_name("BOX_LISTENER_TASK")
    box_listener_template = box_listener.build()

    # a task-level group: the first branch to complete wins
    tasks_group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 2, noop_executor)
    tasks_group.set_name("parallelTasks")
    tasks_group.add_parallel_task(_executor("fast_executor", Noopexecutor))
    tasks_group.add_parallel_task(box_listener_template)
    tasks_group.set_type(ParallelCompositeTask)
    tasks_group.set_task_operator(TaskOperator.ATLEAST_ONE)
    tasks_group_template = tasks_group.build()

    # shipping copies: how many is decided when a workflow is created
    shipping_group = ParallelCompositeProcessTemplateDagBuilder(Dagger.app)
    shipping_group.set_name("ShippingCompositeProcess")
    shipping_group.set_parallel_operator_type(TaskOperator.JOIN_ALL)
    shipping_group.set_type(ParallelCompositeTask)
    shipping_group.set_next_process(tasks_group_template)

    # two processes side by side
    side_a = ProcessTemplateDagBuilder(Dagger.app)
    side_a.set_name("SideA")
    side_a.set_root_task(_executor("side_a_executor", Noopexecutor))
    side_a.set_type(DefaultProcessTemplateDAGInstance)
    side_b = ProcessTemplateDagBuilder(Dagger.app)
    side_b.set_name("SideB")
    side_b.set_root_task(_executor("side_b_executor", Noopexecutor))
    side_b.set_type(DefaultProcessTemplateDAGInstance)
    sides = ParallelCompositeProcessTemplateDagBuilder(Dagger.app)
    sides.set_name("parallelProcess")
    sides.set_parallel_operator_type(TaskOperator.JOIN_ALL)
    sides.set_type(ParallelCompositeTask)
    sides.set_parallel_process_templates(side_a.build())
    sides.set_parallel_process_templates(side_b.build())
    sides.set_next_process(shipping_group.build())

    preprocessing = DynamicProcessTemplateDagBuilder(Dagger.app)
    preprocessing.set_name("ORDER_PREPROCESSING")
    preprocessing.set_next_process(sides.build())

    template_builder = DefaultTemplateBuilder(Dagger.app)
    template_builder.set_name(template_name)
    template_builder.set_type(DefaultTemplateDAGInstance)
    template_builder.set_root(preprocessing.build())
    return template_builder.build()


def preprocessing_builders() -> list[Any]:
    """The two ORDER_PREPROCESSING processes a 0.2.6 agent chose for each order."""
    builders = []
    for name in ("ORDER_PREPROCESS_1", "ORDER_PREPROCESS_2"):
        builder = ProcessTemplateDagBuilder(Dagger.app)
        builder.set_name(name)
        builder.set_root_task(preprocess_executor_task_template)
        builder.set_type(DefaultProcessTemplateDAGInstance)
        builders.append(builder)
    return builders


def shipping_process_builder() -> Any:
    builder = ProcessTemplateDagBuilder(Dagger.app)
    builder.set_name("SHIPPING")
    builder.set_root_task(shipping_executor_task_template)
    builder.set_type(DefaultProcessTemplateDAGInstance)
    return builder


# -- a process template composed into a workflow on the fly, and stopped through the instance ----------
class SimpleKafkaListenerTask(KafkaListenerTask[str, str]):
    correlatable_key = "simple_id"

    # A plain def: an ``async def`` stop hook's ``await topic.send`` would write through asgiref's
    # shared executor thread, whose database connection outlives the test.
    def stop(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        cancelled_topic.send(value=f"listener {runtime_parameters['simple_id']}")

    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True

    async def get_correlatable_keys_from_payload(self, payload: Any) -> list[TaskLookupKey]:
        tpayload = json.loads(payload)
        return [(self.correlatable_key, key) for key in tpayload[self.correlatable_key]]


class SimpleProcessInstance(DefaultProcessTemplateDAGInstance):
    def stop(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        cancelled_topic.send(value=f"process {runtime_parameters['simple_id']}")


@Dagger.register_process_template("PortSimpleProcess")
def register_simple_process(process_name: str) -> IProcessTemplateDAG:
    simple_topic = Dagger.create_topic(SIMPLE_TOPIC, key_type=bytes, value_type=bytes)
    listener = KafkaListenerTaskTemplateBuilder(Dagger.app)
    listener.set_topic(simple_topic)
    listener.set_type(SimpleKafkaListenerTask)
    listener.set_name("SIMPLE_LISTENER_TASK")
    process = ProcessTemplateDagBuilder(Dagger.app)
    process.set_name(process_name)
    process.set_root_task(listener.build())
    process.set_type(SimpleProcessInstance)
    return process.build()


def on_the_fly_template(template_name: str = "PortOnTheFlyWorkflow") -> ITemplateDAG:
    template_builder = DefaultTemplateBuilder(Dagger.app)
    template_builder.set_name(template_name)
    template_builder.set_type(DefaultTemplateDAGInstance)
    template_builder.set_root(workflow_engine.process_templates["PortSimpleProcess"])
    return template_builder.build()
