"""Poison messages on the real bridge and broker: each one is a dead letter with its reason, its
offset is committed, and the good message behind it on the same partition is routed."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from dagger_django.engine.outbox import MESSAGE_ID_HEADER
from dagger_django.models import InboxMessage, InboxStatus, Status

from ..helpers import wait_for
from .test_bridge import create, finished, new_id, wait_node

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def send_raw(kafka: Any, value: bytes, *, key: str, headers: list[tuple[str, bytes]]) -> None:
    kafka.producer.produce("bad_ready", value=value, key=key, headers=headers)
    kafka.producer.flush(10)


def poison_then_good(
    bridge: Any, kafka: Any, value: bytes, headers: list[tuple[str, bytes]] = ()
) -> InboxMessage:
    """Send the poison and, keyed alike (same partition, after it), the message its workflow waits
    for; return the poison's dead letter once the workflow completed and the offsets are in."""
    order = new_id("poison")
    wf = create("KafkaBad", order_id=order)
    wait_node(wf.id, "main_listener_task", Status.EXECUTING)
    tag = ("x-test", order.encode())
    send_raw(kafka, value, key=order, headers=[tag, *headers])
    kafka.send("bad_ready", {"order_id": order}, key=order)
    assert finished(wf.id).status == Status.COMPLETED  # the good message was routed
    bridge.assert_alive()
    wait_for(lambda: kafka.committed_to_end(bridge.group, "bad_ready"), message="the offsets to be committed")
    [dead] = InboxMessage.objects.filter(topic="bad_ready", key=order, headers__contains={"x-test": order})
    assert dead.status == InboxStatus.INVALID
    return dead


def test_a_value_nested_500_deep_around_a_nul_is_a_dead_letter(bridge: Any, kafka: Any) -> None:
    value = b'{"order_id": ' + b"[" * 500 + b'"\\u0000"' + b"]" * 500 + b"}"
    dead = poison_then_good(bridge, kafka, value)
    assert dead.reason == "too_deep"
    assert bytes(dead.raw) == value


def test_a_correlation_value_with_a_lone_surrogate_is_a_dead_letter(bridge: Any, kafka: Any) -> None:
    value = b'{"order_id": "\\ud800"}'
    dead = poison_then_good(bridge, kafka, value)
    assert dead.reason == "bad_unicode"
    assert bytes(dead.raw) == value


def test_a_nul_in_the_message_id_header_is_a_dead_letter(bridge: Any, kafka: Any) -> None:
    bad_id = b"id-" + uuid.uuid4().hex.encode() + b"\x00x"
    dead = poison_then_good(bridge, kafka, b'{"order_id": "whatever"}', [(MESSAGE_ID_HEADER, bad_id)])
    assert dead.reason == "bad_message_id"
    assert dead.message_id is None
    assert base64.b64decode(dead.headers[MESSAGE_ID_HEADER]["b64"]) == bad_id
