"""The ready list (``dagger_django.adapters.ready``) on the real Redis, then with the real worker:
what a submit appends and announces, how a worker's task takes its batch (and takes it again when
it comes back), what a failed announcement leaves, and workflows run to completion through it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dagger_django import DAGBuilderHelper, Dagger
from dagger_django import tasks as celery_tasks
from dagger_django.adapters import ready
from dagger_django.adapters.celery import CeleryDispatcher
from dagger_django.engine import ports, recovery
from dagger_django.models import Status, Workflow
from tests.helpers import stored_nodes

from ..helpers import wait_for
from . import workflows as w

pytestmark = [pytest.mark.e2e]
S = Status
TEMPLATE = "E2EReadyList"


@Dagger.register_template(TEMPLATE)
def ready_list_workflow(template_name: str) -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    steps = [
        helper.generic_executor_task_builder(task_type=w.Step, name=n) for n in ("first", "second", "third")
    ]
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks(steps)
    )
    return helper.generic_template(
        template_name=template_name, root_process=helper.build_and_link_processes([process])
    )


def _redis() -> Any:
    return redis.Redis.from_url(ready._broker_url())


def _messages(queue: str) -> list[str]:
    """The task names of the Celery messages waiting in ``queue`` (kombu's Redis list)."""
    return [json.loads(raw)["headers"]["task"] for raw in _redis().lrange(queue, 0, -1)]


def _targets(count: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    return [(uuid.uuid4(), uuid.uuid4()) for _ in range(count)]


@pytest.fixture
def own_queue(settings: Any) -> Iterator[str]:
    """A queue (and so a ready list) of this test's own; emptied afterwards."""
    queue = f"ready-test-{uuid.uuid4().hex[:10]}"
    settings.DAGGER = {**settings.DAGGER, "CELERY_QUEUE": queue}
    yield queue
    client = _redis()
    client.delete(queue, *client.keys(f"dagger:{{{queue}}}:*"))


def test_appends_keep_their_order_and_ring_the_bell_once(own_queue: str) -> None:
    first, second, third = _targets(3)
    ready.append([first])
    ready.append([second, third])
    assert ready.waiting() == 3
    assert _messages(own_queue) == ["dagger_django.run_ready"]  # one announcement for all three
    assert _redis().pttl(ready._keys()[1]) > 0  # the bell expires if its message is lost
    assert ready.take("task-1") == [first, second]  # half of what waits, oldest first


def test_a_task_takes_half_of_what_waits_at_most_a_batch_and_announces_the_rest(
    own_queue: str, settings: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "DISPATCH_BATCH": 4}
    targets = _targets(10)
    ready.append(targets)
    _redis().delete(own_queue)  # the first announcement, as if a worker had received it
    batches = []
    for number in range(6):
        batches.append(ready.take(f"task-{number}"))
        if number == 0:
            # 6 left: the bell rang again, so that a free pool process helps.
            assert _messages(own_queue) == ["dagger_django.run_ready"]
    assert [len(b) for b in batches] == [4, 3, 2, 1, 0, 0]  # at most 4; then half, rounded up
    assert [t for b in batches for t in b] == targets  # each exactly once, in order
    assert ready.waiting() == 0


def test_a_task_that_comes_back_gets_the_same_batch_until_it_is_done(own_queue: str) -> None:
    targets = _targets(4)
    ready.append(targets)
    taken = ready.take("redelivered")
    assert taken == targets[:2]
    ready.append(_targets(2))
    assert ready.take("redelivered") == taken  # redelivered or retried: the same id, the same batch
    ready.done("redelivered")
    assert ready.take("redelivered") == targets[2:]  # a new batch, once the first was run


def test_an_entry_that_is_not_a_node_is_skipped(own_queue: str, caplog: Any) -> None:
    good = _targets(1)[0]
    _redis().rpush(ready._keys()[0], b"not-a-node", f"{good[0]}:{good[1]}")
    assert ready.take("task-1") == []  # half of two: the bad one, skipped (and logged)
    assert "malformed entry" in caplog.text
    assert ready.take("task-2") == [good]


def test_an_announcement_that_fails_clears_the_bell_and_raises(own_queue: str, monkeypatch: Any) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the broker is gone")

    monkeypatch.setattr(celery_tasks.run_ready, "apply_async", refuse)
    with pytest.raises(ConnectionError):
        ready.append(_targets(1))
    assert not _redis().exists(ready._keys()[1])  # the next append rings again
    monkeypatch.undo()
    ready.append(_targets(1))
    assert _messages(own_queue) == ["dagger_django.run_ready"]


def test_a_task_whose_announcement_of_the_rest_fails_still_runs_its_batch(
    own_queue: str, monkeypatch: Any, caplog: Any
) -> None:
    targets = _targets(4)
    _redis().rpush(ready._keys()[0], *[f"{w}:{n}" for w, n in targets])

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the broker is gone")

    monkeypatch.setattr(celery_tasks.run_ready, "apply_async", refuse)
    assert ready.take("task") == targets[:2]  # its batch, to run now
    assert "could not announce 2 waiting node(s)" in caplog.text
    assert ready.waiting() == 2  # the rest waits for the next bell or the recovery sweep
    assert not _redis().exists(ready._keys()[1])


def test_the_recovery_sweep_announces_a_list_whose_message_was_lost(own_queue: str) -> None:
    previous = ports.set_dispatcher(CeleryDispatcher())
    try:
        assert recovery.ready_wake() is False  # nothing waits
        ready.append(_targets(2))
        _redis().delete(own_queue, ready._keys()[1])  # the message and its bell are gone
        assert recovery.ready_wake() is True
        assert _messages(own_queue) == ["dagger_django.run_ready"]
        assert recovery.ready_wake() is False  # announced already: the bell is set
    finally:
        ports.set_dispatcher(previous)


def test_without_the_ready_list_each_node_gets_a_message(own_queue: str, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "READY_LIST": False}
    workflow_id, node_id = _targets(1)[0]
    CeleryDispatcher().run_node(workflow_id=workflow_id, node_id=node_id)
    assert _messages(own_queue) == ["dagger_django.run_node"]
    assert ready.waiting() == 0


@pytest.mark.django_db(transaction=True)
def test_a_submit_whose_append_fails_is_owed_and_recovery_sends_it(
    celery_worker_process: Any, monkeypatch: Any
) -> None:
    """Redis unreachable after the commit: the submit stands, the node is owed (not lost), and the
    next recovery sweep hands it out through the list once Redis answers."""
    from config.celery import app

    dead_url = _dead_url()
    monkeypatch.setattr(ready, "_broker_url", lambda: dead_url)
    wf = Dagger.get_template(TEMPLATE).create_instance(submit_task=True)
    owed = stored_nodes.get(workflow_id=wf.id, status=S.SUBMITTED)
    assert owed.redispatch_at is not None
    monkeypatch.undo()
    assert app.conf.task_default_queue == celery_worker_process.queue
    assert recovery.nodes_recover() == 1
    wait_for(
        lambda: Workflow.objects.filter(pk=wf.id, status=S.COMPLETED).exists(),
        message="the owed workflow to complete after recovery",
    )


@pytest.mark.django_db(transaction=True)
def test_workflows_submitted_together_run_through_the_list(celery_worker_process: Any) -> None:
    ids = [Dagger.get_template(TEMPLATE).create_instance(submit_task=True).id for _ in range(30)]
    wait_for(
        lambda: Workflow.objects.filter(pk__in=ids, status=S.COMPLETED).count() == len(ids),
        message=lambda: f"{Workflow.objects.filter(pk__in=ids, status=S.COMPLETED).count()} of 30 completed",
    )
    assert ready.waiting() == 0


@pytest.mark.django_db(transaction=True)
def test_a_task_that_died_holding_its_batch_runs_it_when_it_comes_back(celery_worker_process: Any) -> None:
    """A worker's task took a batch and died before running it (its pool process was killed): Celery
    hands the same message (the same task id) out again, and it runs that batch."""
    previous = ports.set_dispatcher(_Holding())
    try:
        ids = [Dagger.get_template(TEMPLATE).create_instance(submit_task=True).id for _ in range(3)]
    finally:
        ports.set_dispatcher(previous)
    # In the list, unannounced: no worker takes them before the test does.
    _redis().rpush(ready._keys()[0], *[f"{wid}:{nid}" for wid, nid in _Holding.targets])
    lease = f"died-{uuid.uuid4().hex[:8]}"
    assert ready.take(lease) == _Holding.targets[:2]  # what the task that died took
    assert ready.take(f"other-{lease}") == _Holding.targets[2:]  # ... and someone else the rest
    celery_tasks.run_ready.apply_async(task_id=lease, **CeleryDispatcher.options())  # it comes back
    wait_for(
        lambda: Workflow.objects.filter(pk__in=ids[:2], status=S.COMPLETED).count() == 2,
        message="the batch of the task that died to complete",
    )
    assert not _redis().exists(ready._keys(lease)[2])  # forgotten once run
    assert Workflow.objects.get(pk=ids[2]).status == S.EXECUTING  # the other task's: still its own
    ready.done(f"other-{lease}")


class _Holding:
    """A dispatcher that keeps what it is handed (the test appends it itself)."""

    targets: list[tuple[uuid.UUID, uuid.UUID]] = []

    def __init__(self) -> None:
        _Holding.targets = []

    def run_node(self, *, workflow_id: uuid.UUID, node_id: uuid.UUID) -> None:
        _Holding.targets.append((workflow_id, node_id))


def _dead_url() -> str:
    """A Redis URL on a port where nothing listens."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    return f"redis://127.0.0.1:{port}/0"
