"""Command and listener task classes for the correlation tests (importable by path)."""

from __future__ import annotations

import threading
from typing import Any

from dagger_django import Dagger, ExecutorTask, KafkaCommandTask, KafkaListenerTask


def short(task: Any) -> str:
    return str(task.task_name).rsplit(".", 1)[-1]


class OrderPizza(KafkaCommandTask):
    """Sends ``{"order_id": ...}`` on its topic, with no key (the business key is used)."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        Dagger.topics[self.topic].send(value={"order_id": runtime_parameters["order_id"], "by": short(self)})


class AsyncOrderPizza(KafkaCommandTask):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        topic = Dagger.create_topic(self.topic)
        await topic.send(
            key="explicit", value={"order_id": runtime_parameters["order_id"]}, headers={"h": "v"}
        )


class SendsThenFails(KafkaCommandTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        Dagger.topics[self.topic].send(value={"never": "sent"})
        raise RuntimeError("after sending")


class Deliver(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))


class ChangeOrderId(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["order_id"] = runtime_parameters["new_order_id"]


class Ready(KafkaListenerTask):
    """Correlates on ``order_id``; records each payload's ``n``; done unless ``done`` is false."""

    correlatable_key = "order_id"

    def get_correlatable_key(self, payload: Any) -> Any:
        return ("order_id", payload["order_id"])

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        payload = args[0]
        runtime_parameters.setdefault("seen", []).append([short(self), payload.get("n")])
        if "new_order_id" in payload:
            runtime_parameters["order_id"] = payload["new_order_id"]
        return payload.get("done", True)


class ReadyByDefault(KafkaListenerTask):
    """Only declares ``correlatable_key``: the payload object is read with it."""

    correlatable_key = "order_id"

    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters.setdefault("seen", []).append([short(self), args[0].get("n")])
        return True


class ByCustomer(ReadyByDefault):
    correlatable_key = "customer_id"


class ManyOrders(KafkaListenerTask):
    """One payload addresses several workflows: ``{"order_ids": [...]}``."""

    correlatable_key = "order_id"

    async def get_correlatable_keys_from_payload(self, payload: Any) -> list[Any]:
        return [("order_id", value) for value in payload["order_ids"]]

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters["batch"] = args[0].get("batch")
        return True


class OnlyOne(Ready):
    match_only_one = True


class ShortBuffer(Ready):
    buffer_ttl_seconds = 5


class ReturnsText(Ready):
    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return "yes"


class Raises(Ready):
    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        raise ValueError("cannot handle this message")


class RaisesOnBad(Ready):
    """Fails on a payload with ``bad``; handles any other like ``Ready``."""

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if args[0].get("bad"):
            raise ValueError("a bad message")
        return super().on_message(runtime_parameters, *args, **kwargs)


class RetriedOnce(Ready):
    max_retries = 1
    retry_backoff = 2.0

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        runtime_parameters.setdefault("attempts", []).append(self.attempt)
        if self.attempt == 1:
            raise ConnectionError("first attempt fails")
        return True


class RepliesOnMessage(Ready):
    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        await Dagger.topics["kitchen"].send(value={"ack": args[0]["order_id"]})
        return True


class BrokenExtractor(Ready):
    def get_correlatable_key(self, payload: Any) -> Any:
        raise KeyError("no idea")


#: on_message of BlockingReady: the idempotency key of each run, and the event that ends them.
BLOCKING_MESSAGES: list[str] = []
BLOCKING_MESSAGE_RELEASE = threading.Event()


class BlockingReady(Ready):
    """An on_message that runs until the test sets BLOCKING_MESSAGE_RELEASE (a long handler)."""

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        BLOCKING_MESSAGES.append(str(self.idempotency_key))
        if not BLOCKING_MESSAGE_RELEASE.wait(timeout=20):
            raise RuntimeError("never released")
        return super().on_message(runtime_parameters, *args, **kwargs)
