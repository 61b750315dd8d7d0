"""After commit: a dispatch that fails is owed, not lost; a running task keeps its lease; a stop
hook is recorded and runs at least once. On the real database, with in-memory dispatchers."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dagger_django import signals
from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.engine import heartbeat, ports, recovery, services
from dagger_django.engine.timers import timers_fire_due
from dagger_django.models import Node, Status, StopHook
from tests.helpers import stored_nodes

from ..helpers import history, wait_for
from . import builders as b
from . import tasks as t
from .conftest import reload

S = Status
LEASE = 300
_names = itertools.count()


def name(prefix: str) -> str:
    return f"{prefix}Dispatch{next(_names)}"


class BrokerDown(InMemoryDispatcher):
    """Every send fails, as the Celery dispatcher's do once its retries are spent."""

    def run_node(self, *, workflow_id: uuid.UUID, node_id: uuid.UUID) -> None:
        raise ConnectionRefusedError("broker unreachable")

    def run_stop_hooks(self, *, workflow_id: uuid.UUID, node_ids: list[uuid.UUID]) -> None:
        raise ConnectionRefusedError("broker unreachable")


@pytest.fixture
def broker_down() -> Iterator[BrokerDown]:
    down = BrokerDown()
    previous = ports.set_dispatcher(down)
    try:
        yield down
    finally:
        ports.set_dispatcher(previous)


@pytest.fixture
def transitions() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def receiver(sender: Any, workflow: Any, from_status: str, to_status: str, **kwargs: Any) -> None:
        seen.append((from_status, to_status))

    signals.workflow_status_changed.connect(receiver, dispatch_uid="test_dispatch")
    try:
        yield seen
    finally:
        signals.workflow_status_changed.disconnect(dispatch_uid="test_dispatch")


def executor(workflow_id: Any, suffix: str) -> Node:
    return stored_nodes.get(workflow_id=workflow_id, name__endswith=f"{suffix}_executor_task")


# -- item 2: a failed dispatch after commit ---------------------------------------------------------
def test_failed_dispatch_is_owed_announced_and_sent_by_the_next_recovery_sweep(
    dispatcher: Any, clock: Any, transitions: Any
) -> None:
    tmpl = b.linear(name("Owed"), (t.Record, "a"), (t.Record, "b"))
    previous = ports.set_dispatcher(BrokerDown())
    try:
        wf = tmpl.create_instance(submit_task=True)  # commits, then the dispatch fails: no error
    finally:
        ports.set_dispatcher(previous)
    assert reload(wf.id).status == S.EXECUTING
    assert (S.NOT_STARTED, S.EXECUTING) in transitions  # announced although nothing was sent
    node = executor(wf.id, "a")
    assert node.status == S.SUBMITTED and node.redispatch_at is not None
    assert dispatcher.runs == type(dispatcher.runs)()
    # No lease to wait for: the very next sweep sends what is owed.
    assert recovery.nodes_recover() == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert stored_nodes.get(pk=node.pk).redispatch_at is None  # the claim cleared it


def test_worker_whose_follow_up_dispatch_fails_finishes_and_its_transition_stands(
    dispatcher: Any, clock: Any, settings: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "INLINE_STEPS": 0}  # each next step goes by message
    tmpl = b.linear(name("FollowUp"), (t.Record, "a"), (t.Record, "b"))
    wf = tmpl.create_instance(submit_task=True)
    wf_id, node_id, lease = dispatcher.runs.popleft()
    previous = ports.set_dispatcher(BrokerDown())
    try:
        assert services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease) == 1  # no error
    finally:
        ports.set_dispatcher(previous)
    assert executor(wf.id, "a").status == S.COMPLETED
    assert executor(wf.id, "b").redispatch_at is not None
    assert recovery.nodes_recover() == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_failed_batch_of_a_timer_sweep_is_owed(dispatcher: Any, clock: Any, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "DISPATCH_BATCH": 2}
    tmpl = b.linear(name("Batch"), (t.Flaky, "a"))
    workflows = [tmpl.create_instance(submit_task=True, fail_times=1) for _ in range(2)]
    dispatcher.drain(fire_due_timers=False)  # each fails once: a retry timer 10 s later
    clock.advance(seconds=11)
    previous = ports.set_dispatcher(BrokerDown())
    try:
        assert timers_fire_due() == 2  # the batch cannot be sent; the sweep still ends well
    finally:
        ports.set_dispatcher(previous)
    assert all(executor(wf.id, "a").redispatch_at is not None for wf in workflows)
    assert recovery.nodes_recover() == 2
    dispatcher.drain()
    assert {reload(wf.id).status for wf in workflows} == {S.COMPLETED}


# -- item 5: the SUBMITTED backlog ------------------------------------------------------------------
def test_submitted_backlog_is_resent_at_most_once_per_lease_with_backoff(dispatcher: Any, clock: Any) -> None:
    wf = b.linear(name("Backlog"), (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.runs.clear()  # the message waits in a long queue: never consumed during the test
    resent_at = []
    for step in range(1, 17 * 4):
        clock.advance(seconds=LEASE / 4)
        if recovery.nodes_recover():
            resent_at.append(step / 4)
    # Once per lease at most, then less and less often (backoff doubling to 8 leases).
    assert resent_at == [1.25, 2.25, 4.25, 8.25, 16.25]
    node = executor(wf.id, "a")
    assert node.redispatches == 5 and len(history(wf.id, "redispatched")) == 5


def test_backlog_lost_with_the_broker_is_sent_again_within_a_lease_not_after_its_backoff(
    dispatcher: Any, clock: Any
) -> None:
    wf = b.linear(name("Flushed"), (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.runs.clear()  # the message waits in a long queue
    for _ in range(34):  # 8.5 leases: re-sent at 1.25, 2.25, 4.25 and 8.25; the next one at 16.25
        clock.advance(seconds=LEASE / 4)
        recovery.nodes_recover()
    assert executor(wf.id, "a").redispatches == 4
    dispatcher.lose_messages()  # the broker restarts empty (a Redis without persistence)
    resent_at = []
    for step in range(35, 35 + 8 * 4):
        clock.advance(seconds=LEASE / 4)
        if recovery.nodes_recover():
            resent_at.append(step / 4)
    # One lease after its last send, as any node whose message went missing (not at 16.25); then
    # the backoff starts again.
    assert resent_at == [9.5, 10.5, 12.5, 16.5]
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


class BrokerUnreachable(InMemoryDispatcher):
    def messages_lost(self) -> bool:
        raise ConnectionRefusedError("broker unreachable")


class DatabaseDownAfterTheLoss(Exception):
    pass


def test_a_broker_that_cannot_be_asked_leaves_the_backoff_alone(clock: Any) -> None:
    dispatcher = BrokerUnreachable()
    previous = ports.set_dispatcher(dispatcher)
    try:
        wf = b.linear(name("Unasked"), (t.Record, "a")).create_instance(submit_task=True)
        dispatcher.runs.clear()
        clock.advance(seconds=LEASE + 1)
        assert recovery.nodes_recover() == 1  # asking failed: the sweep goes on as usual
        assert recovery.broker_loss_check() is False
        assert executor(wf.id, "a").redispatch_at is not None
    finally:
        ports.set_dispatcher(previous)


def test_a_loss_stays_unmarked_until_the_backoffs_are_dropped(
    dispatcher: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = b.linear(name("Unmarked"), (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.runs.clear()
    clock.advance(seconds=LEASE + 1)
    assert recovery.nodes_recover() == 1  # re-sent once: the next one after a lease of backoff
    dispatcher.lose_messages()

    def database_down() -> tuple[int, int]:
        raise DatabaseDownAfterTheLoss

    with monkeypatch.context() as patched:
        patched.setattr(recovery, "backoffs_forget", database_down)
        with pytest.raises(DatabaseDownAfterTheLoss):
            recovery.broker_loss_check()
    assert dispatcher.messages_lost()  # still to be dealt with: the next sweep does it
    assert recovery.broker_loss_check() is True
    assert not dispatcher.messages_lost()
    assert executor(wf.id, "a").redispatch_at is None


# -- item 5: the lease heartbeat (real clock, the hook runs in a thread like a worker's) ----------
#: The lease of the real-clock tests, in seconds.
LIVE_LEASE = 2.0
#: Pause between two sweeps of the real-clock tests: sweeping in a tight loop would starve the
#: heartbeat thread of the CPU it needs on a loaded machine (pacing, not a wait for an outcome).
SWEEP_PACE = 0.02


@pytest.fixture
def real_clock_engine(transactional_db: Any, settings: Any) -> Iterator[InMemoryDispatcher]:
    # A redelivered message of the same lease waits while the beats are fresh (three beats): with
    # beats of 0.25 s a loaded CI machine must stall the beater 0.75 s to fool the test.
    settings.DAGGER = {**settings.DAGGER, "LEASE_SECONDS": LIVE_LEASE, "HEARTBEAT_SECONDS": 0.25}
    fake = InMemoryDispatcher()
    previous = ports.set_dispatcher(fake)
    t.BLOCKING_RUNS.clear()
    t.BLOCKING_RELEASE.clear()
    try:
        yield fake
    finally:
        t.BLOCKING_RELEASE.set()
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


def test_task_running_longer_than_the_lease_runs_exactly_once_while_recovery_sweeps(
    real_clock_engine: InMemoryDispatcher,
) -> None:
    wf = b.linear(name("Long"), (t.Blocking, "long"), (t.Record, "after")).create_instance(submit_task=True)
    wf_id, node_id, lease = real_clock_engine.runs.popleft()
    thread = _run_in_thread(wf_id, node_id, lease)
    wait_for(lambda: t.BLOCKING_RUNS, message="the long task to start")
    sweeps = 0
    started = ports.now()
    # Sweep for two leases while the task runs: a live task is never handed out again.
    while (ports.now() - started).total_seconds() < 2 * LIVE_LEASE:
        assert recovery.nodes_recover() == 0
        sweeps += 1
        # The same message delivered again (Redis' visibility timeout) runs nothing either.
        with pytest.raises(services.LeaseHeld):
            services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease)
        time.sleep(SWEEP_PACE)
    t.BLOCKING_RELEASE.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    real_clock_engine.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert len(t.BLOCKING_RUNS) == 1 and sweeps > 3
    assert not [e for e in history(wf.id) if e.reason in ("recovered", "reclaimed")]


def test_task_of_a_dead_worker_is_recovered_once_its_heartbeat_is_stale(
    real_clock_engine: InMemoryDispatcher,
) -> None:
    wf = b.linear(name("DeadBeat"), (t.Record, "a")).create_instance(submit_task=True)
    wf_id, node_id, lease = real_clock_engine.runs.popleft()
    assert services._claim(uuid.UUID(wf_id), uuid.UUID(node_id), lease) is not None  # then it dies
    with pytest.raises(services.LeaseHeld):  # its message, redelivered at once, waits
        services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease)
    wait_for(lambda: recovery.nodes_recover() == 1, timeout=10, message="recovery of the dead worker's node")
    real_clock_engine.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert len(history(wf.id, "recovered")) == 1


def test_heartbeat_refreshes_only_a_lease_still_held(real_clock_engine: InMemoryDispatcher) -> None:
    b.linear(name("Beat"), (t.Record, "a")).create_instance(submit_task=True)
    wf_id, node_id, lease = real_clock_engine.runs.popleft()
    services._claim(uuid.UUID(wf_id), uuid.UUID(node_id), lease)
    node = stored_nodes.get(pk=node_id)
    with (
        heartbeat.beating(node.id, lease, workflow_id=node.workflow_id),
        heartbeat.beating(node.id, "someone-else", workflow_id=node.workflow_id),
    ):
        assert heartbeat.beat_now() == 1
    assert stored_nodes.get(pk=node_id).updated_at > node.updated_at
    assert heartbeat.beat_now() == 0  # nothing registered once the blocks ended


# -- item 8: stop hooks ---------------------------------------------------------------------------
def _stopped_while_running(dispatcher: Any, cls: type = t.Stoppable) -> tuple[Any, Node]:
    wf = b.linear(name("Stop"), (cls, "s")).create_instance(submit_task=True)
    wf_id, node_id, lease = dispatcher.runs.popleft()
    assert services._claim(uuid.UUID(wf_id), uuid.UUID(node_id), lease) is not None  # running
    services.workflow_stop(workflow_id=wf.id)
    return wf, stored_nodes.get(pk=node_id)


def test_stop_records_the_hook_as_pending_in_the_same_transaction(dispatcher: Any) -> None:
    wf, node = _stopped_while_running(dispatcher)
    assert (node.status, node.stop_hook) == (S.STOPPED, StopHook.PENDING)
    t.STOPPED_HOOKS.clear()
    dispatcher.drain()
    node = stored_nodes.get(pk=node.id)
    assert node.stop_hook == StopHook.DONE and node.stop_hook_at is not None
    assert t.STOPPED_HOOKS == ["s_executor_task"]
    # The task's hook and its running process's hook (spec 2.8: processes' hooks are called).
    assert len(history(wf.id, "stop_hook_ran")) == 2
    services.stop_hooks_run(workflow_id=wf.id, node_ids=[node.id])  # redelivered: not again
    assert t.STOPPED_HOOKS == ["s_executor_task"]


def test_lost_stop_hook_message_is_recovered_and_the_hook_runs(dispatcher: Any, clock: Any) -> None:
    wf, node = _stopped_while_running(dispatcher)
    dispatcher.stop_hooks.clear()  # the message is lost
    t.STOPPED_HOOKS.clear()
    clock.advance(seconds=LEASE - 1)
    assert recovery.nodes_recover() == 0
    clock.advance(seconds=2)
    assert recovery.nodes_recover() == 2  # the task's hook and its process's
    assert recovery.nodes_recover() == 0  # sent once per backoff period
    dispatcher.drain()
    node = stored_nodes.get(pk=node.id)
    assert node.stop_hook == StopHook.DONE and t.STOPPED_HOOKS == ["s_executor_task"]


def test_stop_hook_whose_dispatch_failed_is_sent_by_the_next_sweep(dispatcher: Any, clock: Any) -> None:
    wf = b.linear(name("StopOwed"), (t.Stoppable, "s")).create_instance(submit_task=True)
    wf_id, node_id, lease = dispatcher.runs.popleft()
    services._claim(uuid.UUID(wf_id), uuid.UUID(node_id), lease)
    previous = ports.set_dispatcher(BrokerDown())
    try:
        services.workflow_stop(workflow_id=wf.id)
    finally:
        ports.set_dispatcher(previous)
    t.STOPPED_HOOKS.clear()
    assert recovery.nodes_recover() == 2  # no lease to wait for (the task's and the process's hook)
    dispatcher.drain()
    assert stored_nodes.get(pk=node_id).stop_hook == StopHook.DONE
    assert t.STOPPED_HOOKS == ["s_executor_task"]


def test_stop_hook_that_raises_is_recorded_failed_and_not_run_again(dispatcher: Any, clock: Any) -> None:
    wf, node = _stopped_while_running(dispatcher, t.StopBoom)
    dispatcher.drain()
    node = stored_nodes.get(pk=node.id)
    assert node.stop_hook == StopHook.FAILED
    (event,) = history(wf.id, "stop_hook_failed")
    assert "stop hook broke" in event.detail["error"]
    clock.advance(seconds=10 * LEASE)
    assert recovery.nodes_recover() == 0


def test_api_shows_a_stop_hook_pending_then_done(dispatcher: Any, django_user_model: Any) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(
        user=django_user_model.objects.create_superuser("hooks-admin", password="x-pw-1")
    )
    wf, node = _stopped_while_running(dispatcher)

    def hook_of_task() -> tuple[str, Any]:
        response = client.get(f"/api/dagger/workflows/{wf.id}/")
        assert response.status_code == 200, response.content
        row = next(task for task in response.json()["tasks"] if task["id"] == str(node.id))
        return row["stop_hook"], row["stop_hook_at"]

    assert hook_of_task() == (StopHook.PENDING, None)
    dispatcher.drain()
    status, at = hook_of_task()
    assert status == StopHook.DONE and at is not None


# -- settings checks ------------------------------------------------------------------------------
def test_visibility_timeout_shorter_than_the_lease_is_reported(settings: Any, monkeypatch: Any) -> None:
    from celery import current_app

    from dagger_django.checks import check_settings

    monkeypatch.setitem(current_app.conf, "broker_url", "redis://127.0.0.1:6379/15")
    monkeypatch.setitem(current_app.conf, "broker_transport_options", {"visibility_timeout": 3600})
    assert "dagger_django.W030" not in [p.id for p in check_settings()]
    monkeypatch.setitem(current_app.conf, "broker_transport_options", {"visibility_timeout": 320})
    assert "dagger_django.W030" in [p.id for p in check_settings()]  # 300 s lease + 120 s margin
    settings.DAGGER = {**settings.DAGGER, "LEASE_SECONDS": 200.0}
    assert "dagger_django.W030" not in [p.id for p in check_settings()]


def test_heartbeat_not_well_under_the_lease_is_an_error(settings: Any) -> None:
    from dagger_django.checks import check_settings

    settings.DAGGER = {**settings.DAGGER, "HEARTBEAT_SECONDS": 120.0}
    assert "dagger_django.E030" in [p.id for p in check_settings()]


def test_workers_that_would_reconnect_for_every_task_are_reported(settings: Any, monkeypatch: Any) -> None:
    from celery import current_app

    from dagger_django.checks import check_settings

    monkeypatch.setitem(current_app.conf, "CELERY_DB_REUSE_MAX", None)
    assert "dagger_django.W031" in [p.id for p in check_settings()]  # CONN_MAX_AGE is 60 in the tests
    monkeypatch.setitem(current_app.conf, "CELERY_DB_REUSE_MAX", 1000)
    assert "dagger_django.W031" not in [p.id for p in check_settings()]
    monkeypatch.setitem(current_app.conf, "CELERY_DB_REUSE_MAX", None)
    settings.DATABASES = {alias: {**conf, "CONN_MAX_AGE": 0} for alias, conf in settings.DATABASES.items()}
    assert "dagger_django.W031" not in [p.id for p in check_settings()]


@pytest.mark.django_db(transaction=True)
def test_after_a_task_an_expired_connection_is_closed_but_not_an_eager_tasks() -> None:
    from types import SimpleNamespace

    from django.db import connection, transaction

    from dagger_django.tasks import _close_old_connections

    def task(eager: bool) -> Any:
        return SimpleNamespace(request=SimpleNamespace(is_eager=eager))

    connection.ensure_connection()
    _close_old_connections(task=task(False))
    assert connection.connection is not None  # healthy and young: kept for the next task
    connection.close_at = 0.0  # outlived CONN_MAX_AGE
    _close_old_connections(task=task(True))
    assert connection.connection is not None  # an eager task ran in its caller's connection
    with transaction.atomic():
        connection.ensure_connection()
        _close_old_connections(task=task(False))
        assert connection.connection is not None  # never inside a transaction
    _close_old_connections(task=task(False))
    assert connection.connection is None
