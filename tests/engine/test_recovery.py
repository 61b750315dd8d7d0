"""Recovery: nodes stranded by a dead worker or a lost message go to a worker again after their
lease; nodes that wait legitimately are left alone."""

from __future__ import annotations

import io
import itertools
import uuid
from typing import Any

import pytest
from django.core.management import call_command

from dagger_django import Dagger, IntervalTaskTemplateBuilder, TriggerTaskTemplateBuilder
from dagger_django import tasks as celery_tasks
from dagger_django.engine import recovery, services
from dagger_django.engine.timers import timers_fire_due
from dagger_django.models import Status
from tests.helpers import stored_nodes

from ..helpers import history
from . import builders as b
from . import tasks as t
from . import time_tasks as tt
from .conftest import reload, statuses

S = Status
LEASE = 300
_names = itertools.count()


def name(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def crashed_worker(dispatcher: Any, wf_id: Any) -> tuple[str, str, str]:
    """Take the node's message and claim the node as a worker that then dies."""
    wf, node_id, lease = dispatcher.runs.popleft()
    work = services._claim(uuid.UUID(wf), uuid.UUID(node_id), lease)
    assert work is not None
    return wf, node_id, lease


def test_executing_node_of_a_dead_worker_runs_again_after_the_lease(dispatcher: Any, clock: Any) -> None:
    tmpl = b.linear(name("Dead"), (t.Flaky, "a"), (t.Record, "b"))
    wf = tmpl.create_instance(submit_task=True)
    _, node_id, _ = crashed_worker(dispatcher, wf.id)  # its message is gone with it (Redis, SIGKILL)
    clock.advance(seconds=LEASE - 1)
    assert recovery.nodes_recover() == 0
    clock.advance(seconds=2)
    assert recovery.nodes_recover() == 1
    node = stored_nodes.get(pk=node_id)
    assert (node.status, node.lease) == (S.SUBMITTED, "")
    (event,) = history(wf.id, "recovered")
    assert (event.from_status, event.to_status) == (S.EXECUTING, S.SUBMITTED)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["keys"] == [f"{node_id}:2"]  # a new attempt, a new idempotency key
    assert wf.runtime_parameters["trace"] == ["b_executor_task"]


def test_late_result_of_a_worker_presumed_dead_is_discarded(dispatcher: Any, clock: Any) -> None:
    tmpl = b.linear(name("Slow"), (t.Flaky, "a"))
    wf = tmpl.create_instance(submit_task=True)
    wf_id, node_id, lease = dispatcher.runs.popleft()
    work = services._claim(wf.id, uuid.UUID(node_id), lease)
    assert work is not None
    clock.advance(seconds=LEASE + 1)
    assert recovery.nodes_recover() == 1
    dispatcher.drain()  # the new attempt completes the workflow
    outcome = services._execute(work)  # the slow first worker finally finishes ...
    assert services._apply(work, outcome, lease=lease, claim_next=True) is None  # ... and is ignored
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["keys"] == [f"{node_id}:2"]


def test_submitted_node_whose_message_was_lost_is_sent_again(dispatcher: Any, clock: Any) -> None:
    tmpl = b.linear(name("Lost"), (t.Record, "a"))
    wf = tmpl.create_instance(submit_task=True)
    dispatcher.runs.clear()  # the broker lost the message
    clock.advance(seconds=LEASE + 1)
    assert recovery.nodes_recover() == 1
    assert recovery.nodes_recover() == 0  # its lease starts again: no flood of duplicates
    assert len(history(wf.id, "redispatched")) == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_duplicate_message_after_recovery_is_harmless(dispatcher: Any, clock: Any) -> None:
    tmpl = b.linear(name("Dup"), (t.Record, "a"))
    wf = tmpl.create_instance(submit_task=True)
    clock.advance(seconds=LEASE + 1)
    assert recovery.nodes_recover() == 1  # the first message was only slow
    dispatcher.drain()  # both messages arrive
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["a_executor_task"]


def test_nodes_that_wait_legitimately_are_left_alone(dispatcher: Any, clock: Any) -> None:
    at = clock.now().timestamp()
    trigger = TriggerTaskTemplateBuilder(Dagger.app).set_type(tt.Remind).set_name("remind")
    trigger.set_time_to_execute_lookup_key("run_at")
    poll = IntervalTaskTemplateBuilder(Dagger.app).set_type(tt.PollUntil).set_name("poll")
    poll.set_time_to_force_complete_lookup_key("deadline").set_interval_execute_period_lookup_key("period")
    waiting = [
        b.template(name("WaitTrigger"), b.process("main", b.helper.build_and_link_tasks([trigger]))),
        b.template(name("WaitPoll"), b.process("main", b.helper.build_and_link_tasks([poll]))),
        b.linear(name("WaitRetry"), (t.Flaky, "flaky")),
        b.template(name("WaitListener"), b.process("main", b.listener("listen"))),
    ]
    ids = [
        tmpl.create_instance(
            submit_task=True,
            run_at=at + 10 * LEASE,
            period=10 * LEASE,
            deadline=at + 100 * LEASE,
            fail_times=1,
        ).id
        for tmpl in waiting
    ]
    dispatcher.drain(fire_due_timers=False)
    assert statuses(ids[2])["flaky_executor_task"] == S.SUBMITTED  # waiting for its retry's backoff
    clock.advance(seconds=5 * LEASE)
    assert recovery.stranded_nodes() == []
    assert recovery.nodes_recover() == 0
    assert stored_nodes.filter(status=S.EXECUTING, kind="process").count() == 4  # containers too


def test_a_running_trigger_of_a_dead_worker_runs_again(dispatcher: Any, clock: Any) -> None:
    trigger = TriggerTaskTemplateBuilder(Dagger.app).set_type(tt.Remind).set_name("remind")
    trigger.set_time_to_execute_lookup_key("run_at")
    tmpl = b.template(name("DeadTrigger"), b.process("main", b.helper.build_and_link_tasks([trigger])))
    wf = tmpl.create_instance(submit_task=True, run_at=clock.now().timestamp() + 10)
    clock.advance(seconds=10)
    assert timers_fire_due(run=False) == 1  # to a worker, which dies
    crashed_worker(dispatcher, wf.id)
    clock.advance(seconds=LEASE + 1)
    assert recovery.nodes_recover() == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_recovery_sweep_is_capped_and_oldest_first(dispatcher: Any, clock: Any, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "MAX_TASKS_PER_TRIGGER": 2}
    tmpl = b.linear(name("Cap"), (t.Record, "a"))
    ids = []
    for _ in range(3):
        ids.append(tmpl.create_instance(submit_task=True).id)
        clock.advance(seconds=1)
    dispatcher.runs.clear()
    clock.advance(seconds=LEASE)
    assert [wf for _, wf in recovery.stranded_nodes()] == ids[:2]
    assert recovery.nodes_recover() == 2
    assert recovery.nodes_recover() == 1


def test_lease_comes_from_the_settings(dispatcher: Any, clock: Any, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "LEASE_SECONDS": 5}
    tmpl = b.linear(name("ShortLease"), (t.Record, "a"))
    tmpl.create_instance(submit_task=True)
    dispatcher.runs.clear()
    clock.advance(seconds=4)
    assert recovery.nodes_recover() == 0
    clock.advance(seconds=2)
    assert recovery.nodes_recover() == 1


def test_recover_command_and_task_run_one_sweep(dispatcher: Any, clock: Any) -> None:
    tmpl = b.linear(name("Command"), (t.Record, "a"))
    first = tmpl.create_instance(submit_task=True)
    second = tmpl.create_instance(submit_task=True)
    dispatcher.runs.clear()
    clock.advance(seconds=61)
    out = io.StringIO()
    call_command("dagger_recover", "--lease", "60", "--limit", "1", stdout=out)
    assert out.getvalue().strip() == "recovered 1 task(s)"
    clock.advance(seconds=LEASE)
    # The second by its lease; the first again, its re-send's backoff (one 60 s lease) being over.
    assert celery_tasks.recover_nodes() == 2
    dispatcher.drain()
    assert reload(first.id).status == reload(second.id).status == S.COMPLETED


def test_worker_start_asks_for_a_recovery_sweep_unless_disabled(
    dispatcher: Any, settings: Any, monkeypatch: Any
) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(celery_tasks.recover_nodes, "apply_async", lambda **kw: sent.append(kw))
    celery_tasks._recover_on_boot(sender=None)
    assert len(sent) == 1
    settings.DAGGER = {**settings.DAGGER, "RESTART_TASKS_ON_BOOT": False}
    celery_tasks._recover_on_boot(sender=None)
    assert len(sent) == 1


@pytest.mark.parametrize("lease", ["0", "-5"])
def test_recover_command_refuses_a_lease_that_is_not_positive(dispatcher: Any, lease: str) -> None:
    with pytest.raises(SystemExit):
        call_command("dagger_recover", "--lease", lease, stdout=io.StringIO(), stderr=io.StringIO())
