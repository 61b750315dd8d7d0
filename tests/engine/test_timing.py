"""Time-driven tasks on the real database with a frozen clock: triggers, intervals, monitors,
process deadlines, retries, and the timer sweep (its cap, its SKIP LOCKED claim, its failures)."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import threading
import uuid
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from dagger_django import (
    Dagger,
    IntervalTaskTemplateBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TaskOperator,
    TriggerTaskTemplateBuilder,
)
from dagger_django import tasks as celery_tasks
from dagger_django.engine import services, timing
from dagger_django.engine.timers import timer_fire, timers_dispatch_upcoming, timers_fire_due
from dagger_django.exceptions import InvalidTemplate, InvalidTriggerTimeForTask
from dagger_django.models import Node, Status, Timer, TimerPurpose, TimerStatus, Workflow
from tests.helpers import stored_nodes

from ..helpers import history
from . import builders as b
from . import tasks as t
from . import time_tasks as tt
from .conftest import concurrent_sweeps, reload, statuses

S = Status
T = TimerStatus


# -- template helpers -----------------------------------------------------------------------------------
def trigger(name: str, cls: type = tt.Remind, key: str = "run_at") -> Any:
    return (
        TriggerTaskTemplateBuilder(Dagger.app)
        .set_type(cls)
        .set_name(name)
        .set_time_to_execute_lookup_key(key)
    )


def interval(name: str, cls: type = tt.PollUntil, *, start_key: str | None = None) -> Any:
    builder = IntervalTaskTemplateBuilder(Dagger.app).set_type(cls).set_name(name)
    if start_key is not None:
        builder.set_time_to_execute_lookup_key(start_key)
    builder.set_time_to_force_complete_lookup_key("deadline")
    builder.set_interval_execute_period_lookup_key("period")
    return builder


def step(name: str) -> Any:
    return b.helper.generic_executor_task_builder(task_type=tt.Step, name=name)


def link(*builders: Any) -> Any:
    return b.helper.build_and_link_tasks(list(builders))


def process(name: str, root: Any, *, process_type: type | None = None, max_run_duration: int = 0) -> Any:
    builder = ProcessTemplateDagBuilder(Dagger.app).set_name(name).set_root_task(root)
    if process_type is not None:
        builder.set_type(process_type)
    return builder.set_max_run_duration(max_run_duration)


def one_process(name: str, *builders: Any, **process_options: Any) -> Any:
    return b.template(name, process("main", link(*builders), **process_options))


def at(clock: Any, seconds: float) -> float:
    """Epoch seconds ``seconds`` from the frozen clock's now."""
    return clock.now().timestamp() + seconds


def node(workflow_id: Any, short_name: str) -> Node:
    return next(n for n in stored_nodes.filter(workflow_id=workflow_id) if n.name.endswith(f".{short_name}"))


def timers(workflow_id: Any, purpose: str | None = None) -> list[Timer]:
    qs = Timer.objects.filter(workflow_id=workflow_id).order_by("id")
    return list(qs.filter(purpose=purpose) if purpose else qs)


def reasons(workflow_id: Any, short_name: str) -> list[str]:
    return [e.reason for e in history(workflow_id) if e.node_name.endswith(f".{short_name}")]


# -- triggers -------------------------------------------------------------------------------------------
def test_trigger_waits_until_its_time_and_fires_when_due_exactly_now(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("TriggerWaits", step("before"), trigger("remind"), step("after"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 60))
    dispatcher.drain()
    assert statuses(wf.id)["remind"] == S.EXECUTING
    (timer,) = timers(wf.id)
    assert (timer.purpose, timer.status) == (TimerPurpose.TRIGGER, T.PENDING)
    assert timer.due_at == clock.now() + dt.timedelta(seconds=60)

    clock.advance(seconds=59.999)
    assert timers_fire_due() == 0
    dispatcher.drain()
    assert statuses(wf.id)["remind"] == S.EXECUTING

    clock.advance(seconds=0.001)  # due exactly now
    assert clock.now() == timer.due_at
    assert timers_fire_due() == 1
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["before_executor_task", "remind", "after_executor_task"]
    assert wf.runtime_parameters["remind_ran_at"] == timer.due_at.timestamp()
    assert Timer.objects.get(pk=timer.pk).status == T.FIRED
    assert reasons(wf.id, "remind") == [
        "waiting_for_time",
        "trigger_due",
        "claimed",
        "parameters_changed",
        "executed",
    ]


def test_trigger_whose_time_has_passed_runs_at_once_without_a_timer(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("TriggerPast", trigger("remind"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, -3600))
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert timers(wf.id) == []


def test_trigger_due_exactly_at_start_runs_at_once(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("TriggerNow", trigger("remind"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 0))
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_trigger_can_end_failure_and_a_workflow_retry_runs_it_again(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("TriggerFails", trigger("remind", tt.TriggerRaises), step("after"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 10))
    clock.advance(seconds=10)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.FAILURE
    assert statuses(wf.id)["remind"] == S.FAILURE  # the original forced trigger tasks to COMPLETED
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    services.workflow_retry(workflow_id=wf.id)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["remind", "after_executor_task"]


def test_trigger_setting_its_status_to_failure_ends_failure(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("TriggerSetsFailure", trigger("remind", tt.TriggerSetsFailure))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 5))
    clock.advance(seconds=5)
    dispatcher.drain()
    assert statuses(wf.id)["remind"] == S.FAILURE
    assert reload(wf.id).status == S.FAILURE


def test_timer_of_a_stopped_workflow_is_cancelled_and_never_fires(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("TriggerStopped", trigger("remind"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 30))
    (timer,) = timers(wf.id)
    services.workflow_stop(workflow_id=wf.id)
    assert Timer.objects.get(pk=timer.pk).status == T.CANCELLED
    clock.advance(seconds=60)
    assert timers_fire_due() == 0
    assert timer_fire(timer_id=timer.pk) is False  # its countdown message arrives anyway
    dispatcher.drain()
    assert reload(wf.id).status == S.STOPPED
    assert statuses(wf.id)["remind"] == S.STOPPED


def test_leftover_pending_timer_of_a_finished_workflow_fires_as_a_noop(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("TriggerLeftover", trigger("remind"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 30))
    (timer,) = timers(wf.id)
    services.workflow_stop(workflow_id=wf.id)
    dispatcher.drain()  # the stopped trigger's stop hook runs (and is recorded) first
    Timer.objects.filter(pk=timer.pk).update(status=T.PENDING)  # as if the cancel had been lost
    events_before = len(history(wf.id))
    clock.advance(seconds=30)
    assert timers_fire_due() == 1
    dispatcher.drain()
    assert Timer.objects.get(pk=timer.pk).status == T.FIRED
    assert len(history(wf.id)) == events_before
    assert len(dispatcher.runs) == 0


# -- the sweep ------------------------------------------------------------------------------------------
_names = itertools.count()


def make_triggers(clock: Any, *offsets: float) -> list[Any]:
    tmpl = one_process(f"Many{next(_names)}", trigger("remind"))
    return [tmpl.create_instance(submit_task=True, run_at=at(clock, s)).id for s in offsets]


def test_sweep_fires_due_timers_earliest_first_and_leaves_the_others(
    dispatcher: Any, clock: Any, settings: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "TIMER_RUN_INLINE": False}  # follow them to the dispatcher
    ids = make_triggers(clock, 30, 10, 20, 90)
    clock.advance(seconds=30)
    assert timers_fire_due() == 3
    runs = [wf for wf, _, _ in dispatcher.runs]
    assert runs == [str(ids[1]), str(ids[2]), str(ids[0])]
    dispatcher.drain(fire_due_timers=False)
    assert [reload(i).status for i in ids] == [S.COMPLETED, S.COMPLETED, S.COMPLETED, S.EXECUTING]
    assert timers(ids[3])[0].status == T.PENDING


def test_sweep_fires_at_most_max_tasks_per_trigger(dispatcher: Any, clock: Any, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "MAX_TASKS_PER_TRIGGER": 2}
    make_triggers(clock, 1, 2, 3, 4, 5)
    clock.advance(seconds=10)
    assert timers_fire_due() == 2
    assert timers_fire_due() == 2
    assert timers_fire_due() == 1
    assert timers_fire_due() == 0
    assert timers_fire_due(limit=10) == 0
    assert Timer.objects.filter(status=T.FIRED).count() == 5


def test_failing_timer_is_logged_stays_pending_and_never_blocks_the_others(
    dispatcher: Any, clock: Any, monkeypatch: Any, caplog: Any
) -> None:
    ids = make_triggers(clock, 1, 2, 3)
    bad = node(ids[0], "remind").id
    real_fire = timing.fire

    def fire(state: Any, node: Any, **kwargs: Any) -> None:
        if node is not None and node.id == bad:
            raise RuntimeError("broken timer")
        real_fire(state, node, **kwargs)

    monkeypatch.setattr(timing, "fire", fire)
    clock.advance(seconds=10)
    assert timers_fire_due() == 2
    assert "broken timer" in caplog.text
    assert [timers(i)[0].status for i in ids] == [T.PENDING, T.FIRED, T.FIRED]
    assert statuses(ids[0])["remind"] == S.EXECUTING
    monkeypatch.setattr(timing, "fire", real_fire)
    assert timers_fire_due() == 1  # the next sweep takes it
    dispatcher.drain(fire_due_timers=False)
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 3


def test_sweep_passes_over_a_timer_whose_workflow_is_locked_elsewhere(dispatcher: Any, clock: Any) -> None:
    ids = make_triggers(clock, 1, 2, 3)
    clock.advance(seconds=10)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        try:
            with transaction.atomic():
                Workflow.objects.select_for_update().get(pk=ids[0])
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        assert timers_fire_due() == 2  # SKIP LOCKED: no wait, no deadlock
        assert [timers(i)[0].status for i in ids] == [T.PENDING, T.FIRED, T.FIRED]
    finally:
        release.set()
        holder.join(timeout=30)
    assert timers_fire_due() == 1


def test_two_concurrent_sweeps_never_fire_one_timer_twice(dispatcher: Any, clock: Any, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "TIMER_RUN_INLINE": False}  # follow them to the dispatcher
    ids = make_triggers(clock, *range(1, 41))
    clock.advance(seconds=60)
    counts = concurrent_sweeps(2, timeout=60)
    assert sum(counts) == 40
    assert Timer.objects.filter(status=T.FIRED).count() == 40
    assert [len(history(i, "trigger_due")) for i in ids] == [1] * 40
    assert len(dispatcher.runs) == 40


def test_sweep_fires_retry_backoff_timers(dispatcher: Any, clock: Any) -> None:
    tmpl = b.linear("RetrySweep", (t.Flaky, "flaky"))
    wf = tmpl.create_instance(submit_task=True, fail_times=1)
    dispatcher.drain(fire_due_timers=False)
    (timer,) = timers(wf.id, TimerPurpose.RETRY)
    assert statuses(wf.id)["flaky_executor_task"] == S.SUBMITTED
    clock.advance(seconds=10)
    assert timers_fire_due() == 1
    dispatcher.drain(fire_due_timers=False)
    assert reload(wf.id).status == S.COMPLETED
    assert Timer.objects.get(pk=timer.pk).status == T.FIRED


def test_countdown_arriving_early_waits_for_the_table(dispatcher: Any, clock: Any) -> None:
    (wf_id,) = make_triggers(clock, 30)
    (timer,) = timers(wf_id)
    dispatcher.timers.clear()
    clock.advance(seconds=29.5)
    assert timer_fire(timer_id=timer.pk) is False
    assert dispatcher.timers == [(timer.pk, timer.due_at)]  # sent again for its due time
    assert Timer.objects.get(pk=timer.pk).status == T.PENDING


def test_sweeps_are_scheduled_at_the_due_times_of_upcoming_timers(
    dispatcher: Any, clock: Any, settings: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "TRIGGER_INTERVAL": 60}
    near = make_triggers(clock, 80, 80.01, 85)  # the first two share a sweep
    burst = make_triggers(clock, *([70] * 501))  # a burst: several sweeps, in parallel
    make_triggers(clock, 10, 200)  # before the window (sent at creation) and after it
    clock.advance(seconds=10)
    assert timers_dispatch_upcoming() == 4
    due = {wf: timers(wf)[0].due_at for wf in (near[1], near[2], burst[0])}
    assert dispatcher.sweeps == [due[burst[0]]] * 2 + [due[near[1]], due[near[2]]]
    clock.advance(seconds=80)
    dispatcher.drain(max_rounds=2000)  # the scheduled sweeps fire everything due by then
    assert Timer.objects.filter(status=T.PENDING).count() == 1


def test_queries_per_timer_firing_stay_small(
    dispatcher: Any, clock: Any, django_assert_max_num_queries: Any
) -> None:
    first, second, third = make_triggers(clock, 10, 10, 10)
    clock.advance(seconds=10)
    (timer,) = timers(first)
    # read the timer; BEGIN, lock + load the workflow (2), compare-and-set, workflow, node,
    # history, COMMIT
    with django_assert_max_num_queries(9):
        assert timer_fire(timer_id=timer.pk) is True
    # Handed to a worker: BEGIN, claim and mark (one statement, SKIP LOCKED), lock + load (2),
    # workflow, node, history, COMMIT; then BEGIN, the claim that finds nothing, COMMIT. A batch
    # of many timers costs the same per transaction (tests/engine/test_timer_batch.py). The
    # worker's claim and apply of the trigger then make 11 more.
    with django_assert_max_num_queries(11):
        assert timers_fire_due(limit=1, run=False) == 1
    # Run by the sweep: BEGIN, claim and mark, load, workflow (its trigger claimed), history,
    # COMMIT; BEGIN, load, workflow, timers cancelled, history, COMMIT (the trigger's result
    # applied); BEGIN, the claim that finds nothing, COMMIT: 15 for what took 11 + 11.
    with django_assert_max_num_queries(15):
        assert timers_fire_due() == 1
    assert statuses(third)["remind"] == S.COMPLETED


# -- intervals ------------------------------------------------------------------------------------------
def test_interval_polls_every_period_until_ready_then_executes(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("IntervalReady", interval("poll"), step("after"))
    wf = tmpl.create_instance(submit_task=True, period=10, deadline=at(clock, 3600), ready_after=3)
    dispatcher.drain()  # first poll at once (no start time)
    assert reload(wf.id).runtime_parameters["polls"] == 1
    assert statuses(wf.id)["poll"] == S.EXECUTING
    (timer,) = timers(wf.id, TimerPurpose.INTERVAL)
    assert timer.due_at == clock.now() + dt.timedelta(seconds=10)
    clock.advance(seconds=10)
    dispatcher.drain()
    assert reload(wf.id).runtime_parameters["polls"] == 2
    clock.advance(seconds=10)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["executed after 3 polls", "after_executor_task"]
    assert reasons(wf.id, "poll").count("interval_polled") == 2


def test_interval_with_a_start_time_waits_for_it(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("IntervalStart", interval("poll", start_key="start"))
    wf = tmpl.create_instance(
        submit_task=True, start=at(clock, 100), period=10, deadline=at(clock, 3600), ready_after=1
    )
    dispatcher.drain()
    assert "polls" not in reload(wf.id).runtime_parameters
    clock.advance(seconds=100)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert reload(wf.id).runtime_parameters["polls"] == 1


def test_interval_deadline_between_polls_runs_execute_at_the_deadline(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("IntervalDeadline", interval("poll"))
    start = clock.now()
    wf = tmpl.create_instance(submit_task=True, period=60, deadline=at(clock, 90))  # never ready
    dispatcher.drain()
    clock.advance(seconds=60)
    dispatcher.drain()  # second poll; the next one would be at 120 s, after the deadline
    (pending,) = Timer.objects.filter(workflow_id=wf.id, status=T.PENDING)
    assert pending.due_at == start + dt.timedelta(seconds=90)
    clock.advance(seconds=30)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED  # the original hung here (spec section 3.5)
    assert wf.runtime_parameters["polls"] == 2  # no poll at the deadline, execute straight away
    assert wf.runtime_parameters["executed_at"] == (start + dt.timedelta(seconds=90)).timestamp()


def test_interval_poll_that_ends_past_the_deadline_executes_at_once(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("IntervalSlowPoll", interval("poll", tt.SlowPoll))
    wf = tmpl.create_instance(submit_task=True, period=10, deadline=at(clock, 30), poll_takes=45)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["polls"] == 1
    assert "interval_deadline" in reasons(wf.id, "poll")


def test_interval_whose_deadline_passed_before_start_executes_without_polling(
    dispatcher: Any, clock: Any
) -> None:
    tmpl = one_process("IntervalLate", interval("poll", start_key="start"))
    wf = tmpl.create_instance(submit_task=True, start=at(clock, -100), period=10, deadline=at(clock, -50))
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["executed after 0 polls"]


def test_async_interval_execute_is_awaited(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("IntervalAsync", interval("poll", tt.AsyncPollUntil))
    wf = tmpl.create_instance(submit_task=True, period=5, deadline=at(clock, 600), ready_after=2)
    dispatcher.drain()
    clock.advance(seconds=5)
    dispatcher.drain()
    assert reload(wf.id).runtime_parameters["trace"] == ["executed after 2 polls"]


def test_interval_returning_a_non_bool_fails_with_invalid_task_result(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("IntervalMaybe", interval("poll", tt.PollSaysMaybe))
    wf = tmpl.create_instance(submit_task=True, period=5, deadline=at(clock, 600))
    dispatcher.drain()
    assert statuses(wf.id)["poll"] == S.FAILURE
    assert "InvalidTaskResult" in node(wf.id, "poll").error
    assert reload(wf.id).status == S.FAILURE


def test_interval_poll_failure_retries_with_a_budget_per_poll(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("IntervalRetry", interval("poll", tt.PollRaisesOnAttempts))
    wf = tmpl.create_instance(
        submit_task=True, period=10, deadline=at(clock, 600), ready_after=3, fail_attempts=[3]
    )
    dispatcher.drain()  # attempt 1: poll 1
    clock.advance(seconds=10)
    dispatcher.drain()  # attempt 2: poll 2
    clock.advance(seconds=10)
    dispatcher.drain()  # attempt 3 raises: one retry allowed for this poll (max_retries=1)
    assert statuses(wf.id)["poll"] == S.SUBMITTED
    (retry,) = Timer.objects.filter(workflow_id=wf.id, purpose=TimerPurpose.RETRY)
    assert retry.due_at == clock.now() + dt.timedelta(seconds=5)  # first retry of this poll
    clock.advance(seconds=5)
    dispatcher.drain()  # attempt 4: poll 3 is ready
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["executed after 3 polls"]


def test_interval_stopped_between_polls_never_polls_again(dispatcher: Any, clock: Any) -> None:
    tmpl = one_process("IntervalStop", interval("poll"))
    wf = tmpl.create_instance(submit_task=True, period=10, deadline=at(clock, 600))
    dispatcher.drain()
    services.workflow_stop(workflow_id=wf.id)
    clock.advance(seconds=60)
    dispatcher.drain()
    assert reload(wf.id).runtime_parameters["polls"] == 1
    assert not Timer.objects.filter(workflow_id=wf.id, status=T.PENDING).exists()


# -- monitors -------------------------------------------------------------------------------------------
def monitored(name: str, *builders: Any, process_type: type = tt.WatchedProcess) -> Any:
    return b.template(
        name,
        process("watched", link(*builders), process_type=process_type),
        process("next", link(step("next"))),
    )


def monitor_of(workflow_id: Any) -> Node:
    return stored_nodes.get(workflow_id=workflow_id, kind="monitor")


def test_monitor_calls_back_once_when_the_process_runs_late(dispatcher: Any, clock: Any) -> None:
    tmpl = monitored("MonitorLate", trigger("slow"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 100), complete_by_time=at(clock, 30))
    dispatcher.drain()
    monitor = monitor_of(wf.id)
    assert monitor.status == S.EXECUTING
    assert monitor.parent_id is None
    assert monitor.task_class.endswith(":Watcher")
    assert monitor.config["monitored_task_id"] == str(node(wf.id, "watched").id)
    assert node(wf.id, "watched").config["monitoring_task_id"] == str(monitor.id)
    (timer,) = timers(wf.id, TimerPurpose.MONITOR)
    assert timer.due_at == clock.now() + dt.timedelta(seconds=30)

    clock.advance(seconds=30)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.runtime_parameters["monitor_calls"] == [["watched", "EXECUTING"]]
    assert monitor_of(wf.id).status == S.COMPLETED
    assert wf.status == S.EXECUTING  # the hook decides what happens to the late process

    clock.advance(seconds=70)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["monitor_calls"] == [["watched", "EXECUTING"]]


def test_monitor_closes_without_callback_when_the_process_finishes_first(dispatcher: Any, clock: Any) -> None:
    tmpl = monitored("MonitorEarly", trigger("quick"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 10), complete_by_time=at(clock, 30))
    (monitor_timer,) = timers(wf.id, TimerPurpose.MONITOR)
    clock.advance(seconds=10)
    dispatcher.drain()
    assert monitor_of(wf.id).status == S.COMPLETED
    assert Timer.objects.get(pk=monitor_timer.pk).status == T.CANCELLED
    assert reasons(wf.id, "Watcher")[-1] == "monitored_task_finished"
    clock.advance(seconds=60)
    assert timers_fire_due() == 0
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert "monitor_calls" not in wf.runtime_parameters


def test_monitor_that_fired_but_ran_after_the_process_finished_does_not_call_back(
    dispatcher: Any, clock: Any
) -> None:
    tmpl = monitored("MonitorRace", trigger("quick"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 30), complete_by_time=at(clock, 20))
    clock.advance(seconds=20)
    assert timers_fire_due() == 1  # the monitor is handed to a worker ...
    held = dispatcher.runs.popleft()  # ... whose message is slow to arrive
    assert monitor_of(wf.id).status == S.SUBMITTED
    clock.advance(seconds=10)
    dispatcher.drain()  # meanwhile the process finishes
    assert statuses(wf.id)["watched"] == S.COMPLETED
    dispatcher.runs.append(held)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert monitor_of(wf.id).status == S.COMPLETED
    assert "monitor_calls" not in wf.runtime_parameters


def test_monitor_due_before_the_process_starts_calls_back_at_once(dispatcher: Any, clock: Any) -> None:
    tmpl = monitored("MonitorPast", trigger("slow"))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 100), complete_by_time=at(clock, -1))
    dispatcher.drain()
    assert reload(wf.id).runtime_parameters["monitor_calls"] == [["watched", "EXECUTING"]]
    assert timers(wf.id, TimerPurpose.MONITOR) == []


def test_monitor_hook_that_raises_fails_the_monitor_but_never_the_workflow(
    dispatcher: Any, clock: Any
) -> None:
    tmpl = monitored("MonitorRaises", trigger("slow"), process_type=tt.WatchedByRaiser)
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 100), complete_by_time=at(clock, 30))
    clock.advance(seconds=30)
    dispatcher.drain()
    monitor = monitor_of(wf.id)
    assert monitor.status == S.FAILURE
    assert "monitor hook failed" in monitor.error
    assert reload(wf.id).status == S.EXECUTING
    clock.advance(seconds=70)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_monitored_process_without_complete_by_time_has_no_monitor(dispatcher: Any, clock: Any) -> None:
    tmpl = monitored("MonitorNone", step("a"))
    wf = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert not stored_nodes.filter(workflow_id=wf.id, kind="monitor").exists()


def test_monitor_time_changed_into_garbage_before_the_process_starts_is_recorded_and_ignored(
    dispatcher: Any, clock: Any
) -> None:
    tmpl = b.template(
        "MonitorGarbage",
        process("first", link(trigger("wait"))),
        process("watched", link(step("a")), process_type=tt.WatchedProcess),
    )
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 10), complete_by_time=at(clock, 60))
    services.workflow_update_parameters(workflow_id=wf.id, changes={"complete_by_time": "soon"})
    clock.advance(seconds=10)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert not stored_nodes.filter(workflow_id=wf.id, kind="monitor").exists()
    assert len(history(wf.id, "monitor_not_started")) == 1


def test_monitoring_type_that_is_not_a_monitor_is_refused_at_creation(dispatcher: Any) -> None:
    tmpl = monitored("MonitorWrongType", step("a"), process_type=tt.WatchedByNonMonitor)
    with pytest.raises(InvalidTemplate, match="MonitoringTask"):
        tmpl.create_instance(submit_task=True, complete_by_time=1_900_000_000)
    assert Workflow.objects.count() == 0


# -- process deadlines (max_run_duration) ---------------------------------------------------------------
def test_max_run_duration_skips_the_unfinished_nodes_and_the_next_process_runs(
    dispatcher: Any, clock: Any
) -> None:
    tmpl = b.template(
        "DeadlineSkips",
        process("slow", link(step("a"), trigger("wait"), step("b")), max_run_duration=60),
        process("next", link(step("c"))),
    )
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 3600))
    dispatcher.drain()
    (deadline,) = timers(wf.id, TimerPurpose.DEADLINE)
    assert deadline.due_at == clock.now() + dt.timedelta(seconds=60)
    clock.advance(seconds=60)
    dispatcher.drain()
    wf = reload(wf.id)
    s = statuses(wf.id)
    assert (s["a_executor_task"], s["wait"], s["b_executor_task"]) == (S.COMPLETED, S.SKIPPED, S.SKIPPED)
    assert s["slow"] == S.SKIPPED  # the wait was a trigger: it ends SKIPPED, not COMPLETED (bug 4)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["a_executor_task", "c_executor_task"]
    assert not Timer.objects.filter(workflow_id=wf.id, status=T.PENDING).exists()


def test_max_run_duration_reaches_parallel_children(dispatcher: Any, clock: Any) -> None:
    group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 2, trigger("wait").build())
    group.set_type(ParallelCompositeTask).set_name("group").set_task_operator(TaskOperator.JOIN_ALL)
    tmpl = b.template("DeadlineParallel", process("slow", group.build(), max_run_duration=5))
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 3600))
    dispatcher.drain()
    clock.advance(seconds=5)
    dispatcher.drain()
    nodes = stored_nodes.filter(workflow_id=wf.id)
    assert {n.name.rsplit(".", 1)[-1]: n.status for n in nodes} == {
        "slow": S.SKIPPED,
        "group": S.SKIPPED,
        "wait": S.SKIPPED,
    }
    assert nodes.filter(status=S.SKIPPED).count() == 4
    assert reload(wf.id).status == S.SKIPPED  # the last process was skipped


def test_max_run_duration_is_cancelled_when_the_process_finishes_first(dispatcher: Any, clock: Any) -> None:
    tmpl = b.template("DeadlineCleanedUp", process("quick", link(step("a")), max_run_duration=60))
    wf = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    (deadline,) = timers(wf.id, TimerPurpose.DEADLINE)
    assert deadline.status == T.CANCELLED
    assert reload(wf.id).status == S.COMPLETED


def test_max_run_duration_drops_a_late_result_of_a_running_task(dispatcher: Any, clock: Any) -> None:
    tmpl = b.template(
        "DeadlineLateResult",
        process("slow", link(step("a")), max_run_duration=5),
        process("next", link(step("c"))),
    )
    wf = tmpl.create_instance(submit_task=True)
    wf_id, node_id, lease = dispatcher.runs.popleft()
    work = services._claim(wf.id, node(wf.id, "a_executor_task").id, lease)  # a worker runs it ...
    assert work is not None
    clock.advance(seconds=5)
    assert timers_fire_due() == 1  # ... while the deadline passes
    outcome = services._execute(work)
    assert services._apply(work, outcome, lease=lease, claim_next=False) is None
    dispatcher.drain()
    wf = reload(wf.id)
    assert statuses(wf.id)["a_executor_task"] == S.SKIPPED
    assert wf.runtime_parameters["trace"] == ["c_executor_task"]
    assert wf.status == S.COMPLETED


def test_max_run_duration_calls_the_stop_hook_of_a_waiting_task(dispatcher: Any, clock: Any) -> None:
    t.STOPPED_HOOKS.clear()
    tmpl = b.template(
        "DeadlineStopHook",
        process("waits", b.listener("wait"), max_run_duration=5),
        process("next", link(step("c"))),
    )
    wf = tmpl.create_instance(submit_task=True, order_id="d-1")
    dispatcher.drain()
    assert node(wf.id, "wait_listener_task").status == S.EXECUTING
    clock.advance(seconds=5)
    dispatcher.drain()
    assert node(wf.id, "wait_listener_task").status == S.SKIPPED
    assert t.STOPPED_HOOKS == ["wait_listener_task"]
    assert reload(wf.id).status == S.COMPLETED


def test_a_retried_process_gets_a_fresh_deadline(dispatcher: Any, clock: Any) -> None:
    tmpl = b.template(
        "DeadlineRetried",
        process("slow", link(b.task(t.Boom, "boom"), trigger("wait")), max_run_duration=60),
    )
    wf = tmpl.create_instance(submit_task=True, run_at=at(clock, 3600))
    dispatcher.drain()
    assert reload(wf.id).status == S.FAILURE
    (first,) = timers(wf.id, TimerPurpose.DEADLINE)
    assert first.status == T.CANCELLED  # the process ended FAILURE
    clock.advance(seconds=600)
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    services.workflow_retry(workflow_id=wf.id)
    dispatcher.drain()
    (fresh,) = [d for d in timers(wf.id, TimerPurpose.DEADLINE) if d.status == T.PENDING]
    assert fresh.due_at == clock.now() + dt.timedelta(seconds=60)
    clock.advance(seconds=60)
    dispatcher.drain()
    assert statuses(wf.id)["wait"] == S.SKIPPED
    assert reload(wf.id).status == S.SKIPPED


# -- bad input at creation ------------------------------------------------------------------------------
NOW = 1_900_000_000


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({}, "missing"),
        ({"run_at": "tomorrow"}, "must be epoch seconds"),
        ({"run_at": True}, "must be epoch seconds"),
        ({"run_at": "nan"}, "must be epoch seconds"),
        ({"run_at": [NOW]}, "must be epoch seconds"),
        ({"run_at": -1}, "not a valid epoch"),
        ({"run_at": NOW * 1000}, "milliseconds"),
    ],
)
def test_bad_trigger_time_is_refused_and_nothing_is_stored(dispatcher: Any, params: Any, match: str) -> None:
    tmpl = one_process("BadTrigger", step("a"), trigger("remind"))
    with pytest.raises(InvalidTriggerTimeForTask, match=match):
        tmpl.create_instance(submit_task=True, **params)
    assert (Workflow.objects.count(), stored_nodes.count(), Timer.objects.count()) == (0, 0, 0)
    assert dispatcher.sent == []


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"period": -5, "deadline": NOW}, "period"),
        ({"period": 0, "deadline": NOW}, "period"),
        ({"period": "often", "deadline": NOW}, "period"),
        ({"period": 10}, "missing"),
        ({"period": 10, "deadline": "later"}, "must be epoch seconds"),
        ({"period": 10, "deadline": NOW, "start": NOW + 1}, "before the time to execute"),
        ({"period": 10, "deadline": NOW, "start": "x"}, "must be epoch seconds"),
    ],
)
def test_bad_interval_settings_are_refused_and_nothing_is_stored(
    dispatcher: Any, params: Any, match: str
) -> None:
    tmpl = one_process("BadInterval", interval("poll", start_key="start"))
    if "start" not in params:
        tmpl = one_process("BadIntervalNoStart", interval("poll"))
    with pytest.raises(InvalidTriggerTimeForTask, match=match):
        tmpl.create_instance(submit_task=True, **params)
    assert (Workflow.objects.count(), stored_nodes.count(), Timer.objects.count()) == (0, 0, 0)


@pytest.mark.parametrize("value", ["at five", -3, NOW * 1000, False])
def test_bad_complete_by_time_is_refused_and_nothing_is_stored(dispatcher: Any, value: Any) -> None:
    tmpl = monitored("BadCompleteBy", step("a"))
    with pytest.raises(InvalidTriggerTimeForTask, match="complete by time"):
        tmpl.create_instance(submit_task=True, complete_by_time=value)
    assert (Workflow.objects.count(), stored_nodes.count(), Timer.objects.count()) == (0, 0, 0)


# -- beat entries, commands, checks -----------------------------------------------------------------------
def beat_rows() -> dict[str, Any]:
    from django_celery_beat.models import PeriodicTask

    return {
        p.name: p for p in PeriodicTask.objects.select_related("interval").filter(name__startswith="dagger")
    }


def test_migrate_registers_one_beat_entry_per_purpose(engine: Any) -> None:
    rows = beat_rows()
    assert sorted(rows) == ["dagger_django: recovery sweep", "dagger_django: timer sweep"]
    sweep = rows["dagger_django: timer sweep"]
    assert (sweep.task, sweep.interval.every, sweep.interval.period) == (
        "dagger_django.sweep_timers",
        60,
        "seconds",
    )
    assert sweep.enabled
    assert rows["dagger_django: recovery sweep"].task == "dagger_django.recover_nodes"


def test_setup_beat_command_is_idempotent_and_follows_the_settings(engine: Any, settings: Any) -> None:
    from django_celery_beat.models import PeriodicTask

    out = io.StringIO()
    call_command("dagger_setup_beat", stdout=out)
    assert out.getvalue().count(": unchanged") == 2
    settings.DAGGER = {**settings.DAGGER, "TRIGGER_INTERVAL": 5, "RECOVERY_INTERVAL": 0}
    out = io.StringIO()
    call_command("dagger_setup_beat", stdout=out)
    assert out.getvalue().count(": updated") == 2
    rows = beat_rows()
    assert rows["dagger_django: timer sweep"].interval.every == 5
    assert rows["dagger_django: recovery sweep"].enabled is False
    changed = {name: row.date_changed for name, row in rows.items()}
    call_command("dagger_setup_beat", stdout=io.StringIO())
    assert {name: row.date_changed for name, row in beat_rows().items()} == changed
    assert PeriodicTask.objects.filter(task__startswith="dagger_django.").count() == 2


def test_fire_timers_command_runs_one_sweep(dispatcher: Any, clock: Any) -> None:
    ids = make_triggers(clock, 1, 2, 3)
    clock.advance(seconds=5)
    out = io.StringIO()
    call_command("dagger_fire_timers", "--limit", "2", stdout=out)
    assert out.getvalue().startswith("fired 2 timer(s)")
    assert celery_tasks.sweep_timers() == 1  # the beat entry's task
    dispatcher.drain(fire_due_timers=False)
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 3


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("MAX_TASKS_PER_TRIGGER", 0, "dagger_django.E006"),
        ("LEASE_SECONDS", 0, "dagger_django.E007"),
        ("RECOVERY_INTERVAL", -1, "dagger_django.E008"),
        ("TIMER_BATCH", 0, "dagger_django.E009"),
        ("TRIGGER_INTERVAL", 0.5, "dagger_django.W001"),
    ],
)
def test_incoherent_time_settings_are_reported_at_start(
    settings: Any, setting: str, value: Any, check_id: str
) -> None:
    from dagger_django.checks import check_settings

    settings.DAGGER = {**getattr(settings, "DAGGER", {}), setting: value}
    assert check_id in [problem.id for problem in check_settings()]


def test_celery_dispatcher_sends_timer_work_to_the_timer_queue(settings: Any, monkeypatch: Any) -> None:
    from dagger_django.adapters.celery import CeleryDispatcher
    from dagger_django.engine import ports

    # READY_LIST off: run_node as a message of its own (the ready list's announcements go to
    # CELERY_QUEUE too: tests/e2e/test_ready_list.py).
    settings.DAGGER = {
        **getattr(settings, "DAGGER", {}),
        "CELERY_QUEUE": "main",
        "TIMER_QUEUE": "timers",
        "READY_LIST": False,
    }
    sent: list[tuple[str, dict[str, Any]]] = []
    for name in ("run_node", "fire_timer", "sweep_timers", "run_stop_hooks"):
        task = getattr(celery_tasks, name)
        monkeypatch.setattr(task, "apply_async", lambda *a, _n=name, **kw: sent.append((_n, kw)))
    dispatcher = CeleryDispatcher()
    soon = ports.now() + dt.timedelta(seconds=1)
    dispatcher.run_node(workflow_id=uuid.uuid4(), node_id=uuid.uuid4())
    dispatcher.fire_timer(timer_id=1, eta=soon)
    dispatcher.fire_timer(timer_id=2, eta=soon + dt.timedelta(days=1))  # far: left to the sweeps
    dispatcher.sweep_timers(eta=soon, count=2)
    dispatcher.run_stop_hooks(workflow_id=uuid.uuid4(), node_ids=[uuid.uuid4()])
    assert [(name, kw["queue"]) for name, kw in sent] == [
        ("run_node", "main"),
        ("fire_timer", "timers"),
        ("sweep_timers", "timers"),
        ("sweep_timers", "timers"),
        ("run_stop_hooks", "main"),
    ]
    assert sent[2][1]["kwargs"] == {"upcoming": False}
    assert 0 < sent[1][1]["countdown"] <= 1
