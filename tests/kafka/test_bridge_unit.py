"""The bridge's loop with a fake consumer: commit order, retries, stop (no broker needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import DataError, OperationalError

from dagger_django.engine import messages
from dagger_django.kafka import bridge as bridge_module
from dagger_django.kafka.bridge import Bridge
from dagger_django.models import InboxMessage, InboxStatus


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: Any, key: bytes | None = None) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value = json.dumps(value).encode()
        self._key = key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[Any]:
        return []


class FakeConsumer:
    """Hands out prepared batches; records what was committed, and when."""

    def __init__(self, batches: list[list[FakeMessage]], journal: list[str]) -> None:
        self.batches = batches
        self.journal = journal
        self.committed: list[tuple[str, int, int]] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.journal.append("subscribe")

    def poll(self, timeout: float) -> Any:
        if not self.batches or not self.batches[0]:
            if self.batches:
                self.batches.pop(0)
            return None
        return self.batches[0].pop(0)

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        if not self.batches:
            return []
        taken = self.batches.pop(0)
        return taken[:num_messages]

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.journal.append("commit")
        self.committed.extend((tp.topic, tp.partition, tp.offset) for tp in offsets)

    def close(self) -> None:
        self.journal.append("close")


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    entries: list[str] = []
    real_route = messages.messages_route

    def route(incoming: list[messages.Incoming], **kwargs: Any) -> list[messages.Routed]:
        entries.append(f"route {len(incoming)}")
        if entries.count("fail") < 1 and any(m.payload == {"fail": "once"} for m in incoming):
            entries.append("fail")
            raise OperationalError("the database went away")
        return real_route(incoming, **kwargs)

    monkeypatch.setattr(messages, "messages_route", route)
    monkeypatch.setattr(bridge_module, "BACKOFF_START", 0.01)
    return entries


def run(batches: list[list[FakeMessage]], journal: list[str], **kwargs: Any) -> tuple[Bridge, FakeConsumer]:
    consumer = FakeConsumer(batches, journal)
    bridge = Bridge(
        topics=["unit_topic"],
        sweep_interval=0,
        poll_timeout=0.01,
        consumer_factory=lambda config: consumer,
        incarnations=lambda topics: {},
        **kwargs,
    )
    bridge.consumer_config = lambda: {"group.id": "unit"}  # type: ignore[method-assign]
    bridge.run()
    return bridge, consumer


@pytest.mark.django_db(transaction=True)
def test_offsets_are_committed_after_the_batch_is_routed(journal: list[str]) -> None:
    batch = [FakeMessage("unit_topic", 0, 10, {"a": 1}), FakeMessage("unit_topic", 0, 11, {"a": 2})]
    bridge, consumer = run([batch], journal, max_messages=2)
    assert journal == ["subscribe", "route 2", "commit", "close"]
    assert consumer.committed == [("unit_topic", 0, 12)]
    assert bridge.stats.messages == 2 and bridge.stats.unmatched == 2


#: The consumers ``configured_consumer`` hands out (``DAGGER['KAFKA_CONSUMER_FACTORY']`` is a path).
CONFIGURED: list[FakeConsumer] = []


def configured_consumer(config: dict[str, Any]) -> FakeConsumer:
    consumer = CONFIGURED.pop()
    consumer.journal.append(f"made for {config['group.id']}")
    return consumer


@pytest.mark.django_db(transaction=True)
def test_the_consumer_comes_from_the_configured_factory(journal: list[str], settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "KAFKA_CONSUMER_FACTORY": f"{__name__}.configured_consumer"}
    CONFIGURED.append(FakeConsumer([[FakeMessage("unit_topic", 0, 3, {"a": 1})]], journal))
    bridge = Bridge(topics=["unit_topic"], sweep_interval=0, max_messages=1, incarnations=lambda topics: {})
    bridge.consumer_config = lambda: {"group.id": "unit"}  # type: ignore[method-assign]
    bridge.run()
    assert journal == ["made for unit", "subscribe", "route 1", "commit", "close"]


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_retries_the_same_batch(journal: list[str]) -> None:
    batch = [FakeMessage("unit_topic", 1, 0, {"fail": "once"})]
    bridge, consumer = run([batch], journal, max_messages=1)
    assert journal == ["subscribe", "route 1", "fail", "route 1", "commit", "close"]
    assert bridge.stats.db_retries == 1
    assert consumer.committed == [("unit_topic", 1, 1)]


@pytest.mark.django_db(transaction=True)
def test_stop_finishes_the_batch_in_hand(journal: list[str]) -> None:
    batch = [FakeMessage("unit_topic", 0, 0, {"a": 1})]
    consumer = FakeConsumer([batch, [FakeMessage("unit_topic", 0, 1, {"a": 2})]], journal)
    bridge = Bridge(
        topics=["unit_topic"],
        sweep_interval=0,
        consumer_factory=lambda config: consumer,
        incarnations=lambda topics: {},
    )
    bridge.consumer_config = lambda: {"group.id": "unit"}  # type: ignore[method-assign]
    real_handle = bridge._handle

    def handle_then_stop(c: Any, b: list[Any]) -> None:
        real_handle(c, b)
        bridge.stop()

    bridge._handle = handle_then_stop  # type: ignore[method-assign]
    bridge.run()
    assert journal == ["subscribe", "route 1", "commit", "close"]
    assert bridge.stats.messages == 1


@pytest.mark.django_db(transaction=True)
def test_a_message_that_breaks_preparing_is_an_internal_error_and_the_batch_goes_on(
    journal: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_prepare = messages._prepare

    def prepare(message: messages.Incoming, *, strict: bool) -> Any:
        if message.payload == {"boom": 1}:
            raise KeyError("an unforeseen bug")
        return real_prepare(message, strict=strict)

    monkeypatch.setattr(messages, "_prepare", prepare)
    batch = [FakeMessage("unit_topic", 0, n, {"boom": 1} if n == 1 else {"a": n}) for n in range(3)]
    bridge, consumer = run([batch], journal, max_messages=3)
    assert consumer.committed == [("unit_topic", 0, 3)]
    rows = {row.offset: row for row in InboxMessage.objects.filter(topic="unit_topic")}
    assert (rows[1].status, rows[1].reason) == (InboxStatus.INVALID, "internal_error")
    assert "an unforeseen bug" in rows[1].detail and bytes(rows[1].raw) == b'{"boom": 1}'
    assert rows[0].status == rows[2].status == InboxStatus.UNMATCHED


@pytest.mark.django_db(transaction=True)
def test_a_message_refused_even_as_a_dead_letter_is_kept_as_a_last_resort_one(
    journal: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_route = messages.messages_route

    def route(incoming: list[messages.Incoming], **kwargs: Any) -> list[messages.Routed]:
        # The database refuses anything carrying this message's key, dead letter or not.
        if any(m.key == "evil" for m in incoming):
            raise DataError("the database refuses this key")
        return real_route(incoming, **kwargs)

    monkeypatch.setattr(messages, "messages_route", route)
    batch = [FakeMessage("unit_topic", 0, n, {"a": n}, key=b"evil" if n == 1 else None) for n in range(3)]
    bridge, consumer = run([batch], journal, max_messages=3)
    assert consumer.committed == [("unit_topic", 0, 3)]
    rows = {row.offset: row for row in InboxMessage.objects.filter(topic="unit_topic")}
    assert (rows[1].status, rows[1].reason) == (InboxStatus.INVALID, "unstorable")
    assert (rows[1].key, bytes(rows[1].raw_key), bytes(rows[1].raw)) == (None, b"evil", b'{"a": 1}')
    assert "its dead letter failed too" in rows[1].detail
    assert rows[0].status == rows[2].status == InboxStatus.UNMATCHED
