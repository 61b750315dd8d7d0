"""Templates and task classes of the Kafka end-to-end tests.

Imported by the tests and by the bridge processes they start (``--import tests.kafka.workflows``);
the Celery worker imports the task classes by path. Every template waits on topics of its own.
"""

from __future__ import annotations

import os
from typing import Any

from dagger_django import DAGBuilderHelper, Dagger, ExecutorTask, KafkaCommandTask, KafkaListenerTask

helper = DAGBuilderHelper(dagger_app=Dagger.app)

#: Topics the session's bridge consumes (created up front with two partitions each).
TOPICS = [
    "pizza_orders",
    "pizza_ready",
    "many_ready",
    "skip_a",
    "skip_b",
    "early_a",
    "early_b",
    "reprocess_ready",
    "counted",
    "bad_ready",
]
#: Consumed only by the bridges of the crash test.
CRASH_TOPIC = "crash_ready"


def short(task: Any) -> str:
    return str(task.task_name).rsplit(".", 1)[-1]


# -- task classes ---------------------------------------------------------------------------------------
class OrderPizza(KafkaCommandTask):
    """The seed's command: tells the pizza service what to bake (keyed by the business key)."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))
        Dagger.topics[self.topic].send(
            value={
                "order_id": runtime_parameters["order_id"],
                "customer_id": runtime_parameters.get("customer_id"),
                "pizza_type": runtime_parameters.get("pizza_type"),
            }
        )


class PizzaReady(KafkaListenerTask):
    """The seed's listener: waits for ``{"order_id": ...}`` on the ready topic."""

    correlatable_key = "order_id"

    def get_correlatable_key(self, payload: Any) -> Any:
        return ("order_id", payload["order_id"])

    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters.setdefault("trace", []).append(short(self))
        runtime_parameters.setdefault("seen", []).append(args[0].get("n"))
        return bool(args[0].get("done", True))


class Counted(PizzaReady):
    """Never done: records every message it is given (duplicates would show twice)."""

    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters.setdefault("seen", []).append(args[0].get("n"))
        return False


class ManyReady(KafkaListenerTask):
    correlatable_key = "order_id"

    async def get_correlatable_keys_from_payload(self, payload: Any) -> list[Any]:
        return [("order_id", value) for value in payload["order_ids"]]

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters.setdefault("trace", []).append(short(self))
        return True


class ReadyByDefault(KafkaListenerTask):
    """Reads ``order_id`` from a JSON object payload (nothing but ``correlatable_key``)."""

    correlatable_key = "order_id"

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True


class Deliver(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))
        runtime_parameters["delivered_by"] = os.getpid()


# -- templates ----------------------------------------------------------------------------------------------
def listener(cls: type, name: str, topic: str, **kwargs: Any) -> Any:
    return helper.generic_listener_task_builder(topic=topic, task_type=cls, process_name=name, **kwargs)


def process(name: str, *builders: Any) -> Any:
    return helper.generic_process_builder(
        process_name=name, root_task=helper.build_and_link_tasks(list(builders))
    )


def delivery() -> Any:
    return process("Delivery", helper.generic_executor_task_builder(task_type=Deliver, name="deliver"))


def workflow(name: str, *processes: Any) -> Any:
    return helper.generic_template(
        template_name=name, root_process=helper.build_and_link_processes(list(processes))
    )


@Dagger.register_template("KafkaPizza")
def pizza(name: str) -> Any:
    order = helper.generic_command_task_builder(
        topic="pizza_orders", task_type=OrderPizza, process_name="Order"
    )
    return workflow(name, process("Order", order, listener(PizzaReady, "Order", "pizza_ready")), delivery())


@Dagger.register_template("KafkaMany")
def many(name: str) -> Any:
    return workflow(name, process("main", listener(ManyReady, "main", "many_ready")), delivery())


@Dagger.register_template("KafkaSkipTo")
def skip_to(name: str) -> Any:
    return workflow(
        name,
        process(
            "main",
            listener(PizzaReady, "first", "skip_a"),
            listener(PizzaReady, "second", "skip_b", allow_skip_to=True),
        ),
        delivery(),
    )


@Dagger.register_template("KafkaEarly")
def early(name: str) -> Any:
    return workflow(
        name,
        process("main", listener(PizzaReady, "first", "early_a"), listener(PizzaReady, "second", "early_b")),
        delivery(),
    )


@Dagger.register_template("KafkaReprocess")
def reprocess(name: str) -> Any:
    return workflow(
        name,
        process("main", listener(PizzaReady, "main", "reprocess_ready", reprocess_on_message=True)),
        delivery(),
    )


@Dagger.register_template("KafkaCounted")
def counted(name: str) -> Any:
    return workflow(name, process("main", listener(Counted, "main", "counted")))


@Dagger.register_template("KafkaBad")
def bad(name: str) -> Any:
    return workflow(name, process("main", listener(ReadyByDefault, "main", "bad_ready")))


@Dagger.register_template("KafkaCrash")
def crash(name: str) -> Any:
    return workflow(name, process("main", listener(PizzaReady, "main", CRASH_TOPIC)), delivery())


#: The hostile-input campaign's topics (tests/faults/test_hostile_messages.py): the first has a
#: listener, the second none. Not in TOPICS: the campaign runs a bridge of its own.
HOSTILE_TOPIC = "hostile_ready"
HOSTILE_UNKNOWN_TOPIC = "hostile_nobody"


@Dagger.register_template("KafkaHostile")
def hostile(name: str) -> Any:
    return workflow(name, process("main", listener(ReadyByDefault, "main", HOSTILE_TOPIC)))


# A bridge started by the tests exports its spans to the file the tests read (tests/tracing.py).
from tests.tracing import export_to_file  # noqa: E402

export_to_file()
