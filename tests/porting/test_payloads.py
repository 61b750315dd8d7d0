"""Listener values as the topic declares them, on the real database with the in-memory dispatcher.

A 0.2.6 listener on ``Dagger.create_topic(name, key_type=bytes, value_type=bytes)`` gets the
message's bytes and decodes them itself; ``value_type=str`` gives text, a record type an instance,
nothing declared the decoded JSON. The same holds for messages from Kafka (``kafka.codec``), from
``POST events/``, for messages kept until the listener starts, and for command tasks' sends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from rest_framework.test import APIClient

from dagger_django import DAGBuilderHelper, Dagger, KafkaListenerTask, TaskLookupKey
from dagger_django.engine import messages
from dagger_django.kafka.codec import from_kafka
from dagger_django.models import InboxMessage, InboxStatus, OutboxMessage, Status, Workflow
from dagger_django.testing import InMemoryDispatcher, engine_under_test

from . import workflows as w

pytestmark = pytest.mark.django_db(transaction=True)
S = Status
URL = "/api/dagger/events/"
helper = DAGBuilderHelper(dagger_app=Dagger.app)


@dataclass
class KafkaMessage:
    """What the bridge gets from confluent-kafka, for ``kafka.codec.from_kafka``."""

    raw: bytes | None
    topic_name: str
    offset_value: int
    key_value: bytes | None = None

    def value(self) -> bytes | None:
        return self.raw

    def key(self) -> bytes | None:
        return self.key_value

    def topic(self) -> str:
        return self.topic_name

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.offset_value

    def headers(self) -> list[tuple[str, bytes]]:
        return []


_offsets = iter(range(10_000_000))


def from_broker(topic: str, raw: bytes) -> messages.Routed:
    """Route ``raw`` as the bridge routes a message consumed from ``topic``."""
    [routed] = messages.messages_route([from_kafka(KafkaMessage(raw, topic, next(_offsets)))])
    return routed


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (fake, _clock):
        yield fake


@pytest.fixture
def registry() -> Iterator[None]:
    """Templates and topics a test adds are forgotten after it (routing reads the registry)."""
    templates, topics = dict(Dagger.template_dags), dict(Dagger.topics)
    yield
    Dagger.template_dags.clear()
    Dagger.template_dags.update(templates)
    for name in set(Dagger.topics) - set(topics):
        del Dagger.topics[name]


def order_pizza(dispatcher: InMemoryDispatcher, *, start: bool = True) -> tuple[str, Any]:
    order = f"port-{uuid.uuid4().hex[:8]}"
    template = Dagger.get_template("PortPizzaWorkflow")
    instance = async_to_sync(template.acreate_instance)(
        partition_key_lookup="order_id", submit_task=True, order_id=order, customer_id="c1", pizza_type=2
    )
    if start:
        dispatcher.drain()
    return order, instance


def params(instance: Any) -> dict[str, Any]:
    return Workflow.objects.get(pk=instance.id).runtime_parameters


# -- value_type=bytes ---------------------------------------------------------------------------------
def test_bytes_topic_listener_gets_the_message_bytes_from_kafka(dispatcher: InMemoryDispatcher) -> None:
    order, instance = order_pizza(dispatcher)
    routed = from_broker(w.READY_TOPIC, json.dumps({"order_id": order, "oven": 3}).encode())
    assert (routed.status, routed.matched) == ("routed", 1), routed.detail
    dispatcher.drain()
    wf = Workflow.objects.get(pk=instance.id)
    assert wf.status == S.COMPLETED
    assert (wf.runtime_parameters["oven"], wf.runtime_parameters["payload_type"]) == (3, "bytes")


def test_bytes_topic_over_post_events_gets_the_payload_as_compact_json_bytes(
    api: APIClient, dispatcher: InMemoryDispatcher
) -> None:
    order, instance = order_pizza(dispatcher)
    response = api.post(
        URL, {"topic": w.READY_TOPIC, "payload": {"order_id": order, "oven": 4}}, format="json"
    )
    assert response.status_code == 202, response.json()
    assert response.json()["status"] == "routed"
    dispatcher.drain()
    assert Workflow.objects.get(pk=instance.id).status == S.COMPLETED
    assert params(instance)["oven"] == 4 and params(instance)["payload_type"] == "bytes"
    message = InboxMessage.objects.get(pk=response.json()["message"])
    assert bytes(message.raw) == json.dumps({"order_id": order, "oven": 4}, separators=(",", ":")).encode()
    assert message.payload == {"order_id": order, "oven": 4}  # still searchable as JSON


def test_bytes_kept_for_a_listener_not_started_yet_are_what_it_gets(dispatcher: InMemoryDispatcher) -> None:
    order, instance = order_pizza(dispatcher, start=False)  # the command has not even run
    routed = from_broker(w.READY_TOPIC, b'{"order_id": "%s", "oven": 5}' % order.encode())
    assert routed.status == "routed"
    dispatcher.drain()
    wf = Workflow.objects.get(pk=instance.id)
    assert wf.status == S.COMPLETED
    assert (wf.runtime_parameters["oven"], wf.runtime_parameters["payload_type"]) == (5, "bytes")


class KeyValueListener(KafkaListenerTask[str, str]):
    """A listener whose messages are ``order_id=...;oven=...`` text, not JSON."""

    correlatable_key = "order_id"

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        fields = dict(part.split("=", 1) for part in payload.decode().split(";"))
        return "order_id", fields["order_id"]

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters["got"] = [type(args[0]).__name__, args[0].decode()]
        return True


def listener_template(name: str, topic: str, cls: type) -> Any:
    listener = helper.generic_listener_task_builder(topic=topic, task_type=cls, process_name="wait")
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks([listener])
    )
    template = helper.generic_template(
        template_name=name, root_process=helper.build_and_link_processes([process])
    )
    Dagger.template_dags[name] = template
    return template


def waiting(dispatcher: InMemoryDispatcher, template: Any) -> tuple[str, Any]:
    order = f"port-{uuid.uuid4().hex[:8]}"
    instance = template.create_instance(partition_key_lookup="order_id", submit_task=True, order_id=order)
    dispatcher.drain()
    return order, instance


def test_bytes_topic_takes_values_that_are_not_json(dispatcher: InMemoryDispatcher, registry: None) -> None:
    Dagger.create_topic("port_kv", key_type=bytes, value_type=bytes)
    order, instance = waiting(dispatcher, listener_template("PortKeyValue", "port_kv", KeyValueListener))
    routed = from_broker("port_kv", f"order_id={order};oven=6".encode())
    assert routed.status == "routed", routed.detail
    dispatcher.drain()
    assert params(instance)["got"] == ["bytes", f"order_id={order};oven=6"]
    message = InboxMessage.objects.get(pk=routed.inbox_id)
    assert message.payload is None and bytes(message.raw) == f"order_id={order};oven=6".encode()


def test_a_topic_without_declared_types_still_refuses_values_that_are_not_json(
    dispatcher: InMemoryDispatcher, registry: None
) -> None:
    listener_template("PortKeyValueUndeclared", "port_kv_undeclared", KeyValueListener)
    routed = from_broker("port_kv_undeclared", b"order_id=o1;oven=6")
    assert (routed.status, routed.reason) == (InboxStatus.INVALID, "not_json")


# -- value_type=str and record types --------------------------------------------------------------------
@dataclass
class Ready:
    order_id: str
    oven: int


class TypedListener(KafkaListenerTask[str, str]):
    """Records what it got: the type's name and the order id read the way that type is read."""

    correlatable_key = "order_id"

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        return "order_id", self._order(payload)

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        runtime_parameters["got"] = [type(args[0]).__name__, self._order(args[0])]
        return True

    @staticmethod
    def _order(payload: Any) -> str:
        if isinstance(payload, Ready):
            return payload.order_id
        if isinstance(payload, str):
            return str(json.loads(payload)["order_id"])
        return str(payload["order_id"])


@pytest.mark.parametrize(
    ("declared", "expected_type"),
    [({"value_type": str}, "str"), ({"value_type": Ready}, "Ready"), ({}, "dict")],
    ids=["str", "record", "nothing-declared"],
)
def test_listener_gets_the_value_type_its_topic_declares(
    dispatcher: InMemoryDispatcher, registry: None, declared: dict[str, Any], expected_type: str
) -> None:
    topic = f"port_typed_{expected_type.lower()}"
    Dagger.create_topic(topic, **declared)
    order, instance = waiting(
        dispatcher, listener_template(f"PortTyped{expected_type}", topic, TypedListener)
    )
    routed = from_broker(topic, json.dumps({"order_id": order, "oven": 1}).encode())
    assert routed.status == "routed", routed.detail
    dispatcher.drain()
    assert params(instance)["got"] == [expected_type, order]


def test_a_record_the_message_cannot_build_is_a_dead_letter_saying_why(
    dispatcher: InMemoryDispatcher, registry: None
) -> None:
    Dagger.create_topic("port_typed_bad", value_type=Ready)
    listener_template("PortTypedBad", "port_typed_bad", TypedListener)
    routed = from_broker("port_typed_bad", json.dumps({"order_id": "o1", "colour": "red"}).encode())
    assert (routed.status, routed.reason) == (InboxStatus.INVALID, "extractor_error")
    assert "Ready" in routed.detail or "record" in routed.detail


# -- command tasks' sends ---------------------------------------------------------------------------------
def test_a_command_sending_json_text_on_a_str_topic_writes_that_text(dispatcher: InMemoryDispatcher) -> None:
    order, _instance = order_pizza(dispatcher)
    [row] = [
        r for r in OutboxMessage.objects.filter(topic=w.ORDERS_TOPIC) if order.encode() in bytes(r.value)
    ]
    expected = json.dumps({"order_id": order, "customer_id": "c1", "pizza_type": 2})
    assert bytes(row.value) == expected.encode()  # the text as is, not a JSON string of it


class Model:
    """A pydantic-style model (``model_dump``), as a record type of a topic."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def model_dump(self) -> dict[str, Any]:
        return dict(self.fields)


def test_sends_encode_bytes_as_they_are_and_records_as_json(dispatcher: InMemoryDispatcher) -> None:
    topic = Dagger.create_topic("port_sends", key_type=bytes, value_type=bytes)
    topic.send(key=b"k1", value=b"\x00\x01raw")
    topic.send(key="k2", value=Ready(order_id="o2", oven=2))
    topic.send(key="k3", value=Model(order_id="o3"))
    values = {bytes(r.key): bytes(r.value) for r in OutboxMessage.objects.filter(topic="port_sends")}
    assert values[b"k1"] == b"\x00\x01raw"
    assert json.loads(values[b"k2"]) == {"order_id": "o2", "oven": 2}
    assert json.loads(values[b"k3"]) == {"order_id": "o3"}
