"""The outbox relay on the real test broker (Tansu) and PostgreSQL: outages, dead rows, order, locks.

The relay runs in this process (``KafkaRelay``) with the engine's in-memory dispatcher and a
frozen clock, so back-off is driven by advancing the clock, not by sleeping.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from dagger_django.engine import messages, outbox, ports
from dagger_django.engine.outbox import MESSAGE_ID_HEADER
from dagger_django.kafka import producer as kafka_producer
from dagger_django.models import OutboxMessage, OutboxStatus, Workflow
from dagger_django.testing import FrozenClock, InMemoryDispatcher, engine_under_test

from . import workflows as w  # noqa: F401 - registers the templates
from .broker import free_port

pytestmark = pytest.mark.django_db(transaction=True)

TOPIC = "outbox_relay"
UPDATES = "outbox_updates"


@pytest.fixture(scope="module")
def topics(kafka_topics: Any) -> Any:
    kafka_topics.create_topics([TOPIC, UPDATES], partitions=2)
    return kafka_topics


@pytest.fixture
def engine() -> Iterator[tuple[InMemoryDispatcher, FrozenClock]]:
    with engine_under_test() as pair:
        yield pair


def use_kafka(settings: Any, bootstrap: str, **dagger: Any) -> None:
    """Point this process's relay at ``bootstrap`` with these extra DAGGER settings."""
    kafka_producer.close_producer(timeout=0)
    settings.DAGGER = {**settings.DAGGER, "KAFKA": {"bootstrap.servers": bootstrap}, **dagger}
    outbox.reset_relay()


@pytest.fixture(autouse=True)
def _fresh_producer() -> Iterator[None]:
    yield
    kafka_producer.close_producer(timeout=0)
    outbox.reset_relay()


def write(key: str | None, value: Any, topic: str = TOPIC) -> OutboxMessage:
    """One outbox row, written like ``Topic.send`` outside a task but with no relay after commit."""
    previous = outbox.set_relay(None) if outbox.get_relay() else None
    try:
        sent = outbox.outbox_send(topic=topic, key=key, value=value)
    finally:
        outbox.set_relay(previous)
    return OutboxMessage.objects.get(message_id=sent.message_id)


def relay_pass() -> int:
    relay = outbox.get_relay()
    assert relay is not None
    return relay.relay(older_than=ports.now())


def header_id(message: Any) -> str | None:
    for name, value in message.headers() or []:
        if name == MESSAGE_ID_HEADER:
            return bytes(value).decode()
    return None


def read(kafka: Any, row: OutboxMessage, topic: str = TOPIC) -> Any:
    return kafka.read(topic, lambda m: header_id(m) == str(row.message_id), timeout=20)


def status_of(row: OutboxMessage) -> str:
    return str(OutboxMessage.objects.get(pk=row.pk).status)


# ==================================================================================================
# Kafka down: the request does not wait, nothing is lost
# ==================================================================================================
def test_with_kafka_down_a_post_answers_fast_and_its_messages_go_out_once_kafka_is_back(
    engine: tuple[InMemoryDispatcher, FrozenClock],
    topics: Any,
    kafka: Any,
    settings: Any,
    django_user_model: Any,
) -> None:
    dispatcher, clock = engine
    use_kafka(settings, f"127.0.0.1:{free_port()}", TASK_UPDATE_TOPIC=UPDATES)
    api = APIClient()
    api.force_authenticate(django_user_model.objects.create_superuser("relay-admin", password="x"))

    started = time.monotonic()
    response = api.post(
        "/api/dagger/workflows/",
        {"template": "KafkaPizza", "runtime_parameters": {"order_id": f"o-{uuid.uuid4().hex[:6]}"}},
        format="json",
    )
    first = time.monotonic() - started
    assert response.status_code == 201, response.content
    # the command task, run as a worker would: its commit relays the command
    started = time.monotonic()
    dispatcher.drain()
    task = time.monotonic() - started
    started = time.monotonic()
    second = api.post(
        "/api/dagger/workflows/",
        {"template": "KafkaPizza", "runtime_parameters": {"order_id": f"o-{uuid.uuid4().hex[:6]}"}},
        format="json",
    )
    again = time.monotonic() - started
    assert second.status_code == 201
    # Before the outbox relay: 11.2-11.6 s each. The first request also builds the producer and
    # warms the process; the bounds leave room for a loaded machine.
    assert first < 2.5 and task < 1.5 and again < 1.5, (first, task, again)

    unsent = list(OutboxMessage.objects.filter(status=OutboxStatus.PENDING))
    assert {row.topic for row in unsent} == {UPDATES, "pizza_orders"}
    assert all(row.claimed_until is None and row.attempts == 0 for row in unsent)  # an outage counts none

    # the broker is back: the background relay (here the bridge's sweep) sends every row
    use_kafka(settings, topics.bootstrap, TASK_UPDATE_TOPIC=UPDATES)
    clock.advance(seconds=60)
    assert messages.messages_sweep(relay_grace_seconds=0).relayed == len(unsent)
    assert not OutboxMessage.objects.exclude(status=OutboxStatus.SENT).exists()
    command = next(row for row in unsent if row.topic == "pizza_orders")
    assert read(kafka, command, "pizza_orders").key() == command.key


def test_a_first_silent_delivery_pauses_the_after_commit_relay_for_seconds_only(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, settings: Any
) -> None:
    """An unacknowledged delivery after a commit is not always an outage (a new producer's first
    delivery, metadata and connection, can outlast OUTBOX_COMMIT_WAIT with the broker up): the
    first one pauses the after-commit relay for FIRST_PAUSE seconds, not the outage pause."""
    use_kafka(settings, f"127.0.0.1:{free_port()}", OUTBOX_COMMIT_WAIT=0.1)
    relay = outbox.get_relay()
    assert isinstance(relay, kafka_producer.KafkaRelay)
    row = write("cold", {"n": 1})
    outbox.relay_after_commit([row.pk])
    assert status_of(row) == OutboxStatus.PENDING
    assert 0 < relay._paused_until - time.monotonic() <= kafka_producer.FIRST_PAUSE
    assert relay._failures == 1


def test_the_after_commit_pause_doubles_with_each_failure_in_a_row_up_to_the_outage_pause() -> None:
    relay = kafka_producer.KafkaRelay(producer_factory=lambda: None)
    pauses = [relay._pause() for _ in range(7)]
    assert pauses == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert kafka_producer.PAUSE_AFTER_FAILURE == 30.0 and kafka_producer.FIRST_PAUSE == 2.0


def test_a_delivery_ends_the_series_of_pauses(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, settings: Any
) -> None:
    use_kafka(settings, topics.bootstrap)
    relay = outbox.get_relay()
    assert isinstance(relay, kafka_producer.KafkaRelay)
    for _ in range(3):
        relay._pause()
    relay._paused_until = 0.0  # the pause is over; the failures in a row are still counted
    row = write("back", {"n": 1})
    assert relay_pass() == 1
    assert status_of(row) == OutboxStatus.SENT
    assert relay._failures == 0


def test_a_relay_pass_with_kafka_down_returns_without_counting_attempts(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, settings: Any
) -> None:
    use_kafka(settings, f"127.0.0.1:{free_port()}", OUTBOX_COMMIT_WAIT=0.1)
    row = write("k", {"n": 1})
    started = time.monotonic()
    outbox.relay_after_commit([row.pk])
    assert time.monotonic() - started < 1.0
    row.refresh_from_db()
    assert row.status == OutboxStatus.PENDING and row.attempts == 0 and row.claimed_until is None
    assert row.last_error  # the reason is visible


# ==================================================================================================
# rows that can never be sent
# ==================================================================================================
def test_unsendable_rows_go_dead_after_the_cap_without_blocking_other_keys(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, kafka: Any, settings: Any
) -> None:
    _, clock = engine
    use_kafka(
        settings,
        topics.bootstrap,
        KAFKA_PRODUCER={"message.max.bytes": 4000},
        OUTBOX_MAX_ATTEMPTS=3,
        OUTBOX_RETRY_DELAY=10.0,
        OUTBOX_BATCH=4,
    )
    # more refused rows than one batch, all older than the good ones
    bad = [write(f"bad-{i}", "x" * 6000) for i in range(6)]
    good = [write(f"good-{i}", {"n": i}) for i in range(3)]

    for _ in range(4):  # the bad rows back off; the good ones are claimed meanwhile
        relay_pass()
    assert all(status_of(row) == OutboxStatus.SENT for row in good)
    for row in good:
        read(kafka, row)

    for _ in range(6):
        clock.advance(seconds=400)
        relay_pass()
    for row in bad:
        row.refresh_from_db()
        assert row.status == OutboxStatus.DEAD and row.attempts == 3, (row.status, row.attempts)
        assert "MSG_SIZE_TOO_LARGE" in row.last_error or "too large" in row.last_error.lower()

    # a later row of a dead row's key is held (commands keep their order), others flow
    held = write("bad-0", {"after": "dead"})
    other = write("fresh", {"n": 9})
    relay_pass()
    assert status_of(held) == OutboxStatus.PENDING and status_of(other) == OutboxStatus.SENT
    assert outbox.outbox_held_by(OutboxMessage.objects.get(pk=held.pk)) == bad[0].pk

    # requeued with a broker that takes it: the dead row goes first, then the one it held
    use_kafka(settings, topics.bootstrap, KAFKA_PRODUCER={"message.max.bytes": 1_000_000})
    assert outbox.outbox_requeue(ids=[bad[0].pk]) == 1
    relay_pass()
    assert status_of(bad[0]) == OutboxStatus.SENT and status_of(held) == OutboxStatus.SENT
    first, then = read(kafka, bad[0]), read(kafka, held)
    assert first.partition() == then.partition() and first.offset() < then.offset()


# ==================================================================================================
# per-key order
# ==================================================================================================
def test_a_retried_row_is_not_overtaken_by_a_newer_row_of_its_key(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, kafka: Any, settings: Any
) -> None:
    _, clock = engine
    use_kafka(settings, topics.bootstrap, KAFKA_PRODUCER={"message.max.bytes": 4000}, OUTBOX_RETRY_DELAY=5.0)
    key = f"order-{uuid.uuid4().hex[:6]}"
    older = write(key, "o" * 5000)  # refused by this producer: fails once
    newer = write(key, {"step": 2})
    unrelated = write(f"other-{key}", {"step": 1})

    relay_pass()
    assert status_of(newer) == OutboxStatus.PENDING  # held behind the older row of its key
    older.refresh_from_db()
    assert older.status == OutboxStatus.PENDING and older.attempts == 1 and older.available_at is not None
    assert status_of(unrelated) == OutboxStatus.SENT
    relay_pass()  # still backing off: the newer row still waits
    assert status_of(newer) == OutboxStatus.PENDING

    use_kafka(
        settings, topics.bootstrap, KAFKA_PRODUCER={"message.max.bytes": 1_000_000}, OUTBOX_RETRY_DELAY=5.0
    )
    clock.advance(seconds=6)
    assert relay_pass() == 2
    first, then = read(kafka, older), read(kafka, newer)
    assert first.key() == key.encode() and then.key() == key.encode()
    assert first.partition() == then.partition() and first.offset() < then.offset()


# ==================================================================================================
# no lock across the network wait
# ==================================================================================================
def _lock_from_another_connection(table: str, ids: list[Any]) -> str | None:
    """Try to lock rows from a separate connection without waiting; the error text, or None."""
    params = connection.get_connection_params()
    with psycopg.connect(
        **{k: v for k, v in params.items() if k in {"host", "port", "user", "password", "dbname"}}
    ) as other:
        try:
            other.execute(f"SELECT 1 FROM {table} WHERE id = ANY(%s) FOR UPDATE NOWAIT", [ids])  # noqa: S608
        except psycopg.errors.LockNotAvailable as exc:
            return str(exc)
    return None


def test_no_lock_is_held_while_the_relay_waits_for_kafka(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, settings: Any, monkeypatch: Any
) -> None:
    dispatcher, _ = engine
    use_kafka(settings, topics.bootstrap, TASK_UPDATE_TOPIC=UPDATES)
    previous = outbox.set_relay(None) if outbox.get_relay() else None
    try:
        with transaction.atomic():
            from dagger_django import Dagger

            instance = Dagger.get_template("KafkaCounted").create_instance(
                submit_task=True, order_id="lock-1"
            )
    finally:
        outbox.set_relay(previous)
    rows = list(OutboxMessage.objects.filter(workflow_id=instance.id))
    assert rows
    seen: list[tuple[bool, str | None, str | None]] = []
    real_publish = kafka_producer.publish

    def publish_and_look(*args: Any, **kwargs: Any) -> Any:
        # runs where the relay is about to wait on the broker
        outcome: list[Any] = []
        thread = threading.Thread(
            target=lambda: outcome.extend(
                [
                    _lock_from_another_connection("dagger_django_outboxmessage", [r.pk for r in rows]),
                    _lock_from_another_connection("dagger_django_workflow", [instance.id]),
                ]
            )
        )
        thread.start()
        thread.join(20)
        seen.append((connection.in_atomic_block, outcome[0], outcome[1]))
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(kafka_producer, "publish", publish_and_look)
    assert relay_pass() == len(rows)
    assert seen and all(s == (False, None, None) for s in seen), seen
    assert Workflow.objects.filter(pk=instance.id).exists()
    dispatcher.drain()


# ==================================================================================================
# what an operator sees: the admin and the command
# ==================================================================================================
def dead_row(key: str, error: str = "Broker: Topic authorization failed") -> OutboxMessage:
    row = write(key, {"k": key})
    OutboxMessage.objects.filter(pk=row.pk).update(status=OutboxStatus.DEAD, attempts=10, last_error=error)
    return OutboxMessage.objects.get(pk=row.pk)


def test_the_outbox_admin_filters_dead_rows_searches_by_key_and_requeues_them(
    client: Any, django_user_model: Any
) -> None:
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw"))
    dead = dead_row("acl-1")
    held = write("acl-1", {"after": 1})
    sent = write("fine", {"n": 1})
    OutboxMessage.objects.filter(pk=sent.pk).update(status=OutboxStatus.SENT)
    url = "/admin/dagger_django/outboxmessage/"

    html = client.get(url, {"status__exact": "dead"}).content.decode()
    assert "Topic authorization failed" in html  # the error, in the list
    listed = client.get(url, {"status__exact": "dead"}).context["cl"].result_list
    assert [r.pk for r in listed] == [dead.pk]
    assert [r.pk for r in client.get(url, {"q": "acl-1"}).context["cl"].result_list] == [held.pk, dead.pk]
    assert [r.pk for r in client.get(url, {"q": TOPIC}).context["cl"].result_list] == [
        sent.pk,
        held.pk,
        dead.pk,
    ]
    page = client.get(f"{url}{held.pk}/change/").content.decode()
    assert f"outbox message {dead.pk}" in page  # why it waits

    response = client.post(
        url, {"action": "requeue_dead", "_selected_action": [dead.pk, sent.pk]}, follow=True
    )
    shown = [str(m) for m in response.context["messages"]]
    assert "Requeued 1 dead message(s)." in shown
    assert any("were not dead" in m for m in shown)
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == (OutboxStatus.PENDING, 0)
    assert status_of(sent) == OutboxStatus.SENT


def test_a_view_only_staff_user_cannot_requeue(client: Any, django_user_model: Any) -> None:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_outboxmessage"))
    client.force_login(user)
    dead = dead_row("acl-2")
    url = "/admin/dagger_django/outboxmessage/"
    assert client.get(url).status_code == 200
    client.post(url, {"action": "requeue_dead", "_selected_action": [dead.pk]})
    assert status_of(dead) == OutboxStatus.DEAD


def test_the_outbox_command_counts_dead_rows_and_requeues_them() -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    dead = dead_row("acl-3")
    write("acl-4", {"n": 1})
    out = StringIO()
    call_command("dagger_outbox", stdout=out)
    assert "pending 1" in out.getvalue() and "dead 1" in out.getvalue()
    with pytest.raises(CommandError, match="1 outbox message"):
        call_command("dagger_outbox", "--fail-if-dead", stdout=StringIO())
    with pytest.raises(CommandError, match="ids, or --all"):
        call_command("dagger_outbox", "requeue", stdout=StringIO())
    out = StringIO()
    call_command("dagger_outbox", "requeue", str(dead.pk), stdout=out)
    assert "requeued 1" in out.getvalue() and status_of(dead) == OutboxStatus.PENDING


def test_the_outbox_command_relays_without_a_bridge(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, kafka: Any, settings: Any
) -> None:
    from io import StringIO

    from django.core.management import call_command

    use_kafka(settings, topics.bootstrap)
    row = write("cmd", {"n": 1})
    out = StringIO()
    call_command("dagger_outbox", "relay", "--once", "--grace", "0", stdout=out)
    assert "sent 1" in out.getvalue() and status_of(row) == OutboxStatus.SENT
    assert read(kafka, row).value() == b'{"n":1}'


# ==================================================================================================
# a relay that died after producing; rounds within one batch
# ==================================================================================================
def test_rows_a_dead_relay_had_claimed_are_sent_again_after_the_lease_with_their_message_id(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, kafka: Any, settings: Any
) -> None:
    _, clock = engine
    use_kafka(settings, topics.bootstrap)
    row = write("crash", {"n": 1})
    assert [r.pk for r in outbox.outbox_claim()] == [row.pk]  # ... and the process died here
    assert relay_pass() == 0  # still leased to the dead relay
    clock.advance(seconds=float(settings.DAGGER.get("OUTBOX_LEASE_SECONDS", 60)) + 1)
    assert relay_pass() == 1
    assert header_id(read(kafka, row)) == str(row.message_id)  # what the receiver's inbox dedupes by


def test_rows_an_after_commit_relay_could_not_record_wait_seconds_not_the_whole_lease(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, kafka: Any, settings: Any, monkeypatch: Any
) -> None:
    """The database went away between the after-commit relay's produce and its record: its claim
    is sized to its short wait, so the background relay sends the row again within seconds."""
    from django.db import OperationalError

    _, clock = engine
    use_kafka(settings, topics.bootstrap)
    row = write("after-commit", {"n": 1})

    def database_gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("the database went away")

    monkeypatch.setattr(outbox, "_record", database_gone)
    outbox.relay_after_commit([row.pk])  # logs, never raises: the background relay takes over
    monkeypatch.undo()
    claimed_until = OutboxMessage.objects.get(pk=row.pk).claimed_until
    wait = float(settings.DAGGER.get("OUTBOX_COMMIT_WAIT", 0.25))
    lease = kafka_producer.after_commit_lease(wait)
    assert claimed_until is not None and (claimed_until - ports.now()).total_seconds() <= lease
    assert lease < float(settings.DAGGER.get("OUTBOX_LEASE_SECONDS", 60)) / 2
    assert relay_pass() == 0  # still claimed
    clock.advance(seconds=lease + 1)
    assert relay_pass() == 1
    assert status_of(row) == OutboxStatus.SENT
    assert header_id(read(kafka, row)) == str(row.message_id)


def test_a_batch_sends_the_rows_of_one_key_in_rounds_and_stops_the_key_at_its_first_failure(
    engine: tuple[InMemoryDispatcher, FrozenClock],
) -> None:
    rows = [write("a", {"n": 1}), write("a", {"n": 2}), write("b", {"n": 1}), write("a", {"n": 3})]
    a1, a2, b1, a3 = rows
    calls: list[list[int]] = []

    def publish(batch: list[OutboxMessage]) -> dict[int, str | None]:
        calls.append([r.pk for r in batch])
        return {r.pk: ("refused" if r.pk == a2.pk else None) for r in batch}

    assert outbox.outbox_relay(publish=publish) == 2
    assert calls == [[a1.pk, b1.pk], [a2.pk]]  # a3 never produced: a2, older, failed
    assert [status_of(r) for r in rows] == ["sent", "pending", "sent", "pending"]
    a3.refresh_from_db()
    assert a3.attempts == 0 and a3.claimed_until is None


# ==================================================================================================
# a producer that failed for good (a broker that lost or fenced its idempotent state)
# ==================================================================================================
class FailsForGood:
    """A producer that failed for good, told the way ``how`` says: ``produce`` raises ``_FATAL``;
    a delivery report carries a fatal ``OUT_OF_ORDER_SEQUENCE_NUMBER``, or a ``PRODUCER_FENCED``
    that librdkafka does not flag fatal (what Tansu answers a fenced producer); ``flush`` raises
    the fatal error (as confluent-kafka does); the ``error_cb`` of its settings hears ``_FATAL``
    and the queued messages are purged (what librdkafka does); or another thread of the process
    saw it fail and replaced it, purging its messages. It never sends again. Metadata requests
    go to a real producer."""

    def __init__(self, config: dict[str, Any], how: str, slot: Any) -> None:
        from confluent_kafka import Producer

        self.real = Producer(config)
        self.error_cb = config["error_cb"]
        self.how = how
        self.slot = slot
        self.reports: list[Any] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        from confluent_kafka import KafkaError, KafkaException

        if self.how == "produce":
            raise KafkaException(KafkaError(KafkaError._FATAL, "producer fenced", fatal=True))
        self.reports.append(kwargs["on_delivery"])

    def _serve(self) -> None:
        from confluent_kafka import KafkaError, KafkaException

        if not self.reports:
            return
        if self.how == "flush":
            raise KafkaException(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True))
        if self.how == "error_cb":
            self.error_cb(KafkaError(KafkaError._FATAL, "out of order sequence", fatal=True))
        if self.how == "replaced":
            self.slot.discard(self, KafkaError(KafkaError._FATAL, "seen by another thread", fatal=True))
        reports, self.reports = self.reports, []
        for report in reports:
            if self.how == "report":
                report(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True), None)
            elif self.how == "fenced":
                report(KafkaError(KafkaError.PRODUCER_FENCED), None)
            else:
                report(KafkaError(KafkaError._PURGE_QUEUE), None)

    def poll(self, timeout: float = 0) -> int:
        self._serve()
        return 0

    def flush(self, timeout: float = 0) -> int:
        self._serve()
        return len(self.reports)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize("how", ["produce", "report", "fenced", "flush", "error_cb", "replaced"])
def test_a_producer_failed_for_good_is_replaced_and_its_rows_go_out_with_the_next_pass(
    engine: tuple[InMemoryDispatcher, FrozenClock], topics: Any, kafka: Any, settings: Any, how: str
) -> None:
    from confluent_kafka import Producer

    heard: list[Any] = []  # the project's own error_cb still hears every error
    use_kafka(settings, topics.bootstrap, KAFKA_PRODUCER={"error_cb": heard.append})
    built: list[Any] = []

    def factory(config: dict[str, Any]) -> Any:
        built.append(FailsForGood(config, how, relay.producers) if not built else Producer(config))
        return built[-1]

    relay = kafka_producer.KafkaRelay(producer_factory=factory)
    outbox.set_relay(relay)
    key = f"fenced-{how}"
    rows = [write(key, {"n": 1}), write(key, {"n": 2}), write(None, {"n": 3})]

    assert relay_pass() == 0
    for row in rows:  # put back as they were: no attempt counted, no back-off, no claim
        row.refresh_from_db()
        assert (row.status, row.attempts, row.available_at, row.claimed_until) == (
            OutboxStatus.PENDING,
            0,
            None,
            None,
        ), row.last_error
    assert relay.producers.replaced == 1 and relay.producers.last_fatal
    if how == "error_cb":
        assert any(error.fatal() for error in heard)

    # the next pass (same frozen clock: nothing waits for a back-off) builds a new producer
    assert relay_pass() == len(rows)
    assert len(built) == 2 and relay.producers.replaced == 1
    assert all(status_of(row) == OutboxStatus.SENT for row in rows)
    first, then = read(kafka, rows[0]), read(kafka, rows[1])
    assert first.partition() == then.partition() and first.offset() < then.offset()
    assert read(kafka, rows[2]).value() == b'{"n":3}'
