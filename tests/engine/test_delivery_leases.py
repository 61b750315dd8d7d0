"""Listener deliveries keep their lease while on_message runs, a waiting backlog is re-sent with
backoff, and sent outbox rows are pruned after their retention. On the real database, with the
in-memory dispatcher (and a frozen clock where no thread runs a handler)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dagger_django import Dagger
from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.engine import heartbeat, messages, outbox, ports, services
from dagger_django.models import Delivery, DeliveryStatus, OutboxMessage, OutboxStatus, Status

from ..helpers import wait_for
from . import listener_tasks as lt
from .conftest import reload
from .test_correlation import RecordingRelay, executor, listener, process, route, template

S = Status
D = DeliveryStatus
LEASE = 300.0  # DELIVERY_LEASE_SECONDS' default


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    """Templates registered by a test are forgotten after it (routing reads the registry)."""
    saved = dict(Dagger.template_dags)
    yield
    Dagger.template_dags.clear()
    Dagger.template_dags.update(saved)


@pytest.fixture
def relay(engine: Any) -> Iterator[RecordingRelay]:
    recording = RecordingRelay()
    outbox.set_relay(recording)
    yield recording
    outbox.reset_relay()


def waiting_listener(name: str, cls: type = lt.Ready) -> Any:
    return template(name, process("p", listener(cls, "wait")), process("q", executor(lt.Deliver, "next")))


# -- a long on_message keeps its claim (real clock: the handler runs in a thread like a worker's) --
@pytest.fixture
def real_clock_engine(transactional_db: Any, settings: Any) -> Iterator[InMemoryDispatcher]:
    settings.DAGGER = {**settings.DAGGER, "DELIVERY_LEASE_SECONDS": 1.0, "HEARTBEAT_SECONDS": 0.1}
    fake = InMemoryDispatcher()
    previous = ports.set_dispatcher(fake)
    outbox.set_relay(RecordingRelay())
    lt.BLOCKING_MESSAGES.clear()
    lt.BLOCKING_MESSAGE_RELEASE.clear()
    try:
        yield fake
    finally:
        lt.BLOCKING_MESSAGE_RELEASE.set()
        outbox.reset_relay()
        ports.set_dispatcher(previous)


def _run_in_thread(wf_id: str, node_id: str, lease: str) -> threading.Thread:
    def work() -> None:
        from django.db import connection

        try:
            services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease)
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_on_message_running_longer_than_the_delivery_lease_is_not_handed_out_again(
    real_clock_engine: InMemoryDispatcher,
) -> None:
    wf = waiting_listener("LongOnMessage", lt.BlockingReady).create_instance(submit_task=True, order_id="r1")
    real_clock_engine.drain()
    assert route("pizza_ready", {"order_id": "r1"}).matched == 1
    wf_id, node_id, lease = real_clock_engine.runs.popleft()
    thread = _run_in_thread(wf_id, node_id, lease)
    wait_for(lambda: lt.BLOCKING_MESSAGES, message="on_message to start")
    started = ports.now()
    sweeps = 0
    # Sweep for three leases while on_message runs: its claim stays fresh, nothing is re-sent.
    while (ports.now() - started).total_seconds() < 3.0:
        assert messages.deliveries_redispatch() == 0
        sweeps += 1
        time.sleep(0.02)  # pacing: a tight loop would starve the heartbeat thread on a busy machine
    assert Delivery.objects.get(node_id=node_id).status == D.CLAIMED
    lt.BLOCKING_MESSAGE_RELEASE.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    real_clock_engine.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert len(lt.BLOCKING_MESSAGES) == 1 and sweeps > 3
    delivery = Delivery.objects.get(node_id=node_id)
    assert (delivery.status, delivery.attempts) == (D.DELIVERED, 1)


# -- frozen clock: the beats are taken by hand, as the beater thread would ------------------------
def test_delivery_of_a_dead_worker_is_recovered_once_its_beats_stop(dispatcher: Any, clock: Any) -> None:
    wf = waiting_listener("DeadOnMessage").create_instance(submit_task=True, order_id="d1")
    dispatcher.drain()
    route("pizza_ready", {"order_id": "d1"})
    wf_id, node_id, lease = dispatcher.runs.popleft()
    work = services._claim(uuid.UUID(wf_id), uuid.UUID(node_id), lease)
    assert work is not None and work.delivery is not None
    with heartbeat.beating_delivery(work.delivery.id, lease):
        for _ in range(8):  # two leases of a live worker's on_message
            clock.advance(seconds=LEASE / 4)
            assert heartbeat.beat_now() == 1
            assert messages.deliveries_redispatch() == 0
    # The worker died: no more beats. One lease later the delivery is handed out again, once.
    clock.advance(seconds=LEASE - 1)
    assert messages.deliveries_redispatch() == 0
    clock.advance(seconds=1)
    assert messages.deliveries_redispatch() == 1
    assert messages.deliveries_redispatch() == 0
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    delivery = Delivery.objects.get(pk=work.delivery.id)
    assert (delivery.status, delivery.attempts) == (D.DELIVERED, 2)


def test_heartbeat_refreshes_only_a_delivery_claim_still_held(dispatcher: Any, clock: Any) -> None:
    waiting_listener("BeatOnMessage").create_instance(submit_task=True, order_id="b1")
    dispatcher.drain()
    route("pizza_ready", {"order_id": "b1"})
    wf_id, node_id, lease = dispatcher.runs.popleft()
    work = services._claim(uuid.UUID(wf_id), uuid.UUID(node_id), lease)
    assert work is not None
    before = Delivery.objects.get(pk=work.delivery.id).updated_at
    clock.advance(seconds=5)
    with (
        heartbeat.beating_delivery(work.delivery.id, lease),
        heartbeat.beating_delivery(work.delivery.id, "other"),
    ):
        assert heartbeat.beat_now() == 1
    assert Delivery.objects.get(pk=work.delivery.id).updated_at == before + dt.timedelta(seconds=5)
    assert heartbeat.beat_now() == 0


def test_waiting_backlog_is_resent_at_most_once_per_lease_with_backoff(dispatcher: Any, clock: Any) -> None:
    waiting_listener("Backlog").create_instance(submit_task=True, order_id="q1")
    dispatcher.drain()
    backlog = 50
    for n in range(backlog):
        route("pizza_ready", {"order_id": "q1", "n": n, "done": False})
    dispatcher.runs.clear()  # the messages wait in a long queue: never consumed during the test
    resent_at = []
    for step in range(1, 17 * 4):
        clock.advance(seconds=LEASE / 4)
        count = messages.deliveries_redispatch()
        if count:
            assert count == backlog
            resent_at.append(step / 4)
    # Once per lease at most, then less and less often (backoff doubling to 8 leases).
    assert resent_at == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(dispatcher.runs) == 5  # one message per sweep for the listener, not one per row
    rows = Delivery.objects.all()
    assert {(r.status, r.redispatches) for r in rows} == {(D.PENDING, 5)}
    # The listener takes them at last: a claim starts the count again.
    dispatcher.drain()
    assert set(Delivery.objects.values_list("status", "redispatches")) == {(D.DELIVERED, 0)}


def test_deliveries_lost_with_the_broker_are_sent_again_at_the_next_sweep(
    dispatcher: Any, clock: Any
) -> None:
    wf = waiting_listener("FlushedBacklog").create_instance(submit_task=True, order_id="f1")
    dispatcher.drain()
    route("pizza_ready", {"order_id": "f1"})
    dispatcher.runs.clear()  # the message waits in a long queue
    for _ in range(34):  # 8.5 leases: re-sent at 1, 2, 4 and 8 leases; the next one at 16
        clock.advance(seconds=LEASE / 4)
        messages.messages_sweep()
    assert Delivery.objects.get().redispatches == 4
    dispatcher.lose_messages()  # the broker restarts empty (a Redis without persistence)
    clock.advance(seconds=LEASE / 4)
    # Routed long ago: sent again at once (the first copy of a delivery waits one lease).
    assert messages.messages_sweep().redispatched == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_due_retry_is_sent_at_once_whatever_the_backoff(dispatcher: Any, clock: Any) -> None:
    waiting_listener("DueRetry").create_instance(submit_task=True, order_id="t1")
    dispatcher.drain()
    route("pizza_ready", {"order_id": "t1"})
    dispatcher.runs.clear()
    clock.advance(seconds=LEASE)
    assert messages.deliveries_redispatch() == 1  # waiting: first re-send, next one in a lease
    Delivery.objects.update(available_at=ports.now())  # a retry (or an owed dispatch) falls due
    assert messages.deliveries_redispatch() == 1
    row = Delivery.objects.get()
    assert (row.available_at, row.redispatch_at, row.redispatches) == (None, None, 0)


# -- outbox retention ---------------------------------------------------------------------------------
def test_retention_prunes_old_sent_outbox_rows_only(relay: RecordingRelay, clock: Any, settings: Any) -> None:
    for n in range(4):
        outbox.outbox_send(topic="retained", value={"n": n})
    rows = list(OutboxMessage.objects.order_by("id"))
    assert [r.status for r in rows] == [OutboxStatus.SENT] * 4
    old = ports.now() - dt.timedelta(days=8)
    OutboxMessage.objects.filter(pk=rows[0].pk).update(sent_at=old)  # sent 8 days ago: pruned
    OutboxMessage.objects.filter(pk=rows[1].pk).update(sent_at=old + dt.timedelta(days=2))  # 6 days: kept
    OutboxMessage.objects.filter(pk=rows[2].pk).update(
        status=OutboxStatus.PENDING, sent_at=None, created_at=old
    )
    OutboxMessage.objects.filter(pk=rows[3].pk).update(status=OutboxStatus.DEAD, sent_at=None, created_at=old)
    settings.DAGGER = {**settings.DAGGER, "OUTBOX_RETENTION_DAYS": 0}
    assert messages.messages_sweep(relay_grace_seconds=1e9).outbox_pruned == 0  # 0 keeps them all
    settings.DAGGER = {**settings.DAGGER, "OUTBOX_RETENTION_DAYS": 7}
    assert messages.messages_sweep(relay_grace_seconds=1e9).outbox_pruned == 1
    assert list(OutboxMessage.objects.order_by("id").values_list("id", flat=True)) == [r.pk for r in rows[1:]]
    clock.advance(seconds=30 * 86400)  # however old, pending and dead rows stay
    assert outbox.outbox_prune() == 1
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {
        OutboxStatus.PENDING,
        OutboxStatus.DEAD,
    }


def test_retention_deletes_in_bounded_batches(relay: RecordingRelay, clock: Any) -> None:
    for n in range(5):
        outbox.outbox_send(topic="retained", value={"n": n})
    clock.advance(seconds=8 * 86400)
    assert outbox.outbox_prune(limit=2) == 2
    assert outbox.outbox_prune(limit=2) == 2
    assert outbox.outbox_prune(limit=2) == 1
    assert not OutboxMessage.objects.exists()


def test_heartbeat_not_well_under_the_delivery_lease_is_an_error(settings: Any) -> None:
    from dagger_django.checks import check_settings

    settings.DAGGER = {**settings.DAGGER, "DELIVERY_LEASE_SECONDS": 20.0, "HEARTBEAT_SECONDS": 10.0}
    assert "dagger_django.E031" in [p.id for p in check_settings()]
    settings.DAGGER = {**settings.DAGGER, "DELIVERY_LEASE_SECONDS": 31.0}
    assert "dagger_django.E031" not in [p.id for p in check_settings()]


def test_sweep_skips_a_delivery_a_worker_holds_instead_of_waiting(dispatcher: Any, clock: Any) -> None:
    waiting_listener("Held").create_instance(submit_task=True, order_id="h1")
    dispatcher.drain()
    route("pizza_ready", {"order_id": "h1"})
    dispatcher.runs.clear()
    clock.advance(seconds=LEASE)
    delivery_id = Delivery.objects.get().pk
    locked, release = threading.Event(), threading.Event()

    def worker() -> None:
        # A worker's claim or apply holds the row in its transaction.
        from django.db import connection, transaction

        try:
            with transaction.atomic():
                Delivery.objects.select_for_update().get(pk=delivery_id)
                locked.set()
                release.wait(timeout=10)  # bounded: a sweep that waits fails the test, not hangs it
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert locked.wait(timeout=10)
        assert messages.deliveries_redispatch() == 0  # left for the next sweep, not waited for
    finally:
        release.set()
        thread.join(timeout=30)
    assert messages.deliveries_redispatch() == 1
