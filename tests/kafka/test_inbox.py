"""Inbox identity and retention, on the real database (no broker: ``messages_route`` directly)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dagger_django import Dagger
from dagger_django.engine import messages, ports
from dagger_django.models import Delivery, InboxMessage, InboxStatus
from dagger_django.testing import InMemoryDispatcher, engine_under_test

from . import workflows as w  # noqa: F401 - registers the listener templates

pytestmark = pytest.mark.django_db(transaction=True)
NOBODY = "nobody_listens_here"


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (fake, _clock):
        yield fake


def at(offset: int, incarnation: str, *, message_id: str | None = None, n: int = 0) -> messages.Incoming:
    return messages.Incoming(
        topic=NOBODY,
        payload={"order_id": "x", "n": n},
        partition=0,
        offset=offset,
        incarnation=incarnation,
        message_id=message_id,
    )


def test_a_recreated_topic_reusing_an_offset_is_a_new_message(dispatcher: InMemoryDispatcher) -> None:
    [first] = messages.messages_route([at(0, "cluster/topic-a", n=1)])
    [again] = messages.messages_route([at(0, "cluster/topic-a", n=1)])
    [recreated] = messages.messages_route([at(0, "cluster/topic-b", n=2)])
    [moved] = messages.messages_route([at(0, "other-cluster/topic-a", n=3)])
    assert first.status == "unmatched"
    assert again.status == messages.DUPLICATE
    assert recreated.status == moved.status == "unmatched"
    assert InboxMessage.objects.filter(topic=NOBODY, offset=0).count() == 3


def test_a_message_id_dedupes_across_offsets_and_incarnations(dispatcher: InMemoryDispatcher) -> None:
    message_id = f"id-{uuid.uuid4().hex}"
    [first] = messages.messages_route([at(5, "c/a", message_id=message_id)])
    [relayed_again] = messages.messages_route([at(9, "c/b", message_id=message_id)])
    assert (first.status, relayed_again.status) == ("unmatched", messages.DUPLICATE)


def received_days_ago(result: messages.Routed, days: float, status: str | None = None) -> int:
    # Only the clock and the status are set by hand: ageing a row through the engine takes days.
    fields: dict[str, Any] = {"received_at": ports.now() - dt.timedelta(days=days)}
    if status:
        fields["status"] = status
    InboxMessage.objects.filter(pk=result.inbox_id).update(**fields)
    assert result.inbox_id is not None
    return result.inbox_id


def test_retention_prunes_every_final_status(dispatcher: InMemoryDispatcher, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "INBOX_RETENTION_DAYS": 7, "INBOX_DEAD_LETTER_RETENTION_DAYS": 30}
    route = messages.messages_route
    dead = messages.Incoming(topic=NOBODY, raw=b"\xff", invalid="not_json", detail="bytes")
    order = f"keep-{uuid.uuid4().hex[:6]}"
    Dagger.get_template("KafkaCounted").create_instance(submit_task=False, order_id=order)
    old = {
        status: received_days_ago(
            route([messages.Incoming(topic=NOBODY, payload={"n": status})])[0], 8, status
        )
        for status in (InboxStatus.ROUTED, InboxStatus.UNMATCHED, InboxStatus.EXPIRED)
    }
    young = received_days_ago(route([messages.Incoming(topic=NOBODY, payload={"n": 1})])[0], 6)
    old_dead = received_days_ago(route([dead])[0], 31)
    young_dead = received_days_ago(route([messages.dead_letter(dead, "not_json", "again")])[0], 8)
    [open_one] = route([messages.Incoming(topic="counted", payload={"order_id": order})])
    assert open_one.status == "routed" and Delivery.objects.filter(message_id=open_one.inbox_id).exists()
    with_open_delivery = received_days_ago(open_one, 100)

    assert messages.inbox_prune() == 4
    left = set(InboxMessage.objects.values_list("id", flat=True))
    assert left.isdisjoint({*old.values(), old_dead})
    assert {young, young_dead, with_open_delivery} <= left

    settings.DAGGER = {**settings.DAGGER, "INBOX_RETENTION_DAYS": 0, "INBOX_DEAD_LETTER_RETENTION_DAYS": 0}
    InboxMessage.objects.update(received_at=ports.now() - dt.timedelta(days=1000))
    assert messages.inbox_prune() == 0
