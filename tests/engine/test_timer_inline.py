"""A sweep runs the triggers it fires (``timers.timers_fire_due`` with ``TIMER_RUN_INLINE``).

The transaction that fires a trigger's timer also claims the trigger (EXECUTING under a lease of
the sweep); after the commit the sweep runs the claimed hooks and applies their results, a batch
per transaction (``services.claimed_run``). On the real database with the in-memory dispatcher
and a frozen clock.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dagger_django import Dagger, TriggerTaskTemplateBuilder
from dagger_django.engine import recovery, services, timers
from dagger_django.models import Status, Timer, TimerStatus
from tests.helpers import stored_nodes

from ..helpers import history
from . import builders as b
from . import time_tasks as tt
from .conftest import reload, statuses

S = Status
_names = itertools.count()


def make_triggers(clock: Any, n: int, cls: type = tt.Remind, *, after: bool = False) -> list[Any]:
    """``n`` workflows whose trigger ``remind`` is due in 5 seconds (``after``: an executor
    ``after`` follows it)."""
    trigger = (
        TriggerTaskTemplateBuilder(Dagger.app)
        .set_type(cls)
        .set_name("remind")
        .set_time_to_execute_lookup_key("run_at")
    )
    builders = [trigger, b.task(tt.Step, "after")] if after else [trigger]
    tmpl = b.template(
        f"TimerInline{next(_names)}", b.process("main", b.helper.build_and_link_tasks(builders))
    )
    due = clock.now().timestamp() + 5
    return [tmpl.create_instance(submit_task=True, run_at=due).id for _ in range(n)]


def test_fired_triggers_are_claimed_by_the_firing_transaction_and_run_by_the_sweep(
    dispatcher: Any, clock: Any, settings: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "TIMER_BATCH": 100}
    ids = make_triggers(clock, 30)
    clock.advance(seconds=10)
    with CaptureQueriesContext(connection) as ctx:
        assert timers.timers_fire_due() == 30
    assert not dispatcher.runs  # nothing went to a worker
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 30
    assert Timer.objects.filter(status=TimerStatus.FIRED).count() == 30
    for i in ids:
        assert [len(history(i, r)) for r in ("trigger_due", "claimed", "executed")] == [1, 1, 1]
    # Fire and claim (the claim of the timers, the load), apply (the load), the claim that finds
    # nothing: the 30 triggers share two transactions, not one each.
    sql = [q["sql"].upper() for q in ctx.captured_queries]
    assert sum("FOR UPDATE" in q for q in sql) == 4
    assert sum(q == "COMMIT" for q in sql) <= 3
    assert sum("SAVEPOINT" in q for q in sql) == 0


def test_the_next_step_after_an_inline_trigger_runs_inline_too(dispatcher: Any, clock: Any) -> None:
    ids = make_triggers(clock, 3, after=True)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 3
    assert not dispatcher.runs
    assert [statuses(i) for i in ids] == [
        {"main": S.COMPLETED, "remind": S.COMPLETED, "after_executor_task": S.COMPLETED}
    ] * 3


def test_a_poison_trigger_fails_alone(dispatcher: Any, clock: Any) -> None:
    good = make_triggers(clock, 3)
    bad = make_triggers(clock, 1, tt.TriggerRaises)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 4
    assert [reload(i).status for i in good] == [S.COMPLETED] * 3
    assert reload(bad[0]).status == S.FAILURE
    assert "trigger failed" in history(bad[0], "raised")[0].detail["error"]


def test_a_trigger_whose_apply_raises_fails_alone_and_is_left_to_recovery(
    dispatcher: Any, clock: Any, monkeypatch: Any, settings: Any
) -> None:
    good = make_triggers(clock, 3)
    (bad,) = make_triggers(clock, 1)
    real_complete = services._complete

    def complete(state: Any, node: Any, work: Any, outcome: Any) -> None:
        if state.workflow.id == bad:
            raise RuntimeError("apply failed")
        real_complete(state, node, work, outcome)

    monkeypatch.setattr(services, "_complete", complete)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 4
    assert [reload(i).status for i in good] == [S.COMPLETED] * 3
    # Its claim is committed, its result was not applied: the lease brings it back.
    assert statuses(bad)["remind"] == S.EXECUTING
    monkeypatch.setattr(services, "_complete", real_complete)
    clock.advance(seconds=float(settings.DAGGER.get("LEASE_SECONDS", 300)) + 1)
    assert recovery.nodes_recover() == 1
    dispatcher.drain()
    assert reload(bad).status == S.COMPLETED


def test_a_sweep_that_dies_after_the_fire_and_claim_commit_leaves_the_triggers_to_recovery(
    dispatcher: Any, clock: Any, monkeypatch: Any, settings: Any
) -> None:
    ids = make_triggers(clock, 5)
    clock.advance(seconds=10)
    # The sweep's process dies once the firing transaction has committed: nothing runs or applies.
    monkeypatch.setattr(services, "claimed_run", lambda works, result, *, deadline, reuse=None: None)
    assert timers.timers_fire_due() == 5
    nodes = list(stored_nodes.filter(workflow_id__in=ids, name__endswith="remind"))
    assert {(n.status, n.attempts) for n in nodes} == {(S.EXECUTING, 1)}
    assert all(n.lease.startswith("timers:") for n in nodes)
    assert not dispatcher.runs
    assert recovery.nodes_recover() == 0  # the lease is fresh
    monkeypatch.undo()
    clock.advance(seconds=float(settings.DAGGER.get("LEASE_SECONDS", 300)) + 1)
    assert recovery.nodes_recover() == 5
    dispatcher.drain()
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 5
    assert {n.attempts for n in stored_nodes.filter(workflow_id__in=ids, name__endswith="remind")} == {2}


def test_past_the_inline_budget_the_sweep_hands_the_triggers_to_workers(
    dispatcher: Any, clock: Any, settings: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "INLINE_SECONDS": 0}
    ids = make_triggers(clock, 4)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 4
    assert {statuses(i)["remind"] for i in ids} == {S.SUBMITTED}
    assert sorted(wf for wf, _, _ in dispatcher.runs) == sorted(str(i) for i in ids)
    dispatcher.drain(fire_due_timers=False)
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 4


@pytest.mark.parametrize("run", [True, False])
def test_concurrent_sweeps_fire_and_run_every_trigger_once(
    dispatcher: Any, clock: Any, settings: Any, run: bool
) -> None:
    from .conftest import concurrent_sweeps

    settings.DAGGER = {**settings.DAGGER, "TIMER_RUN_INLINE": run, "TIMER_BATCH": 7}
    ids = make_triggers(clock, 40)
    clock.advance(seconds=10)
    assert sum(concurrent_sweeps(3, timeout=60)) == 40
    dispatcher.drain(fire_due_timers=False)
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 40
    assert [len(history(i, "executed")) for i in ids] == [1] * 40


def test_a_batch_whose_writes_fail_is_fired_again_with_a_savepoint_per_timer(
    dispatcher: Any, clock: Any, monkeypatch: Any
) -> None:
    from dagger_django.engine import txn

    ids = make_triggers(clock, 5)
    real_write = txn.deferred_write
    calls: list[int] = []

    def write(states: Any) -> None:
        calls.append(len(states))
        if len(calls) == 1:
            raise ValueError("refused")
        real_write(states)

    monkeypatch.setattr(txn, "deferred_write", write)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 5
    assert calls[0] == 5  # the batch, once, then each timer in its own savepoint
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 5
    assert [len(history(i, "trigger_due")) for i in ids] == [1] * 5


def test_a_sweep_inside_a_callers_transaction_hands_the_triggers_to_workers(
    dispatcher: Any, clock: Any
) -> None:
    from django.db import transaction

    ids = make_triggers(clock, 2)
    clock.advance(seconds=10)
    with transaction.atomic():
        assert timers.timers_fire_due() == 2
    assert {statuses(i)["remind"] for i in ids} == {S.SUBMITTED}
    dispatcher.drain(fire_due_timers=False)
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 2


def test_a_trigger_that_cannot_be_built_still_fires_and_goes_to_a_worker(dispatcher: Any, clock: Any) -> None:
    good = make_triggers(clock, 2)
    (bad,) = make_triggers(clock, 1, tt.TriggerUnbuildable)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 3  # its firing is not rolled back, nor tried again
    assert [reload(i).status for i in good] == [S.COMPLETED] * 2
    assert Timer.objects.filter(workflow_id=bad, status=TimerStatus.FIRED).count() == 1
    assert statuses(bad)["remind"] == S.SUBMITTED  # not claimed: a worker's claim reports it
    assert [run[0] for run in dispatcher.runs] == [str(bad)]


def test_what_a_sweep_hands_to_workers_is_sent_before_it_runs_the_triggers_it_claimed(
    dispatcher: Any, clock: Any, monkeypatch: Any, settings: Any
) -> None:
    from . import tasks as t

    settings.DAGGER = {**settings.DAGGER, "TIMER_BATCH": 100}
    retrying = b.linear(f"InlineFlush{next(_names)}", (t.Flaky, "flaky")).create_instance(
        submit_task=True, fail_times=1
    )
    dispatcher.drain(fire_due_timers=False)  # attempt 1 fails: its retry waits on a timer (10 s)
    triggers = make_triggers(clock, 3)
    sent_before_hooks: list[list[str]] = []
    real_run = services.claimed_run

    def claimed_run(*args: Any, **kwargs: Any) -> Any:
        sent_before_hooks.append([run[0] for run in dispatcher.runs])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(services, "claimed_run", claimed_run)
    clock.advance(seconds=15)
    assert timers.timers_fire_due() == 4
    # The executor's retry is not a timed kind: it goes to a worker, and before the triggers run.
    assert sent_before_hooks == [[str(retrying.id)]]
    assert [reload(i).status for i in triggers] == [S.COMPLETED] * 3
    dispatcher.drain()
    assert reload(retrying.id).status == S.COMPLETED
