"""Timer sweeps fire a batch of due timers per transaction (``timers.timers_fire_due``).

Each batch claims the due timers of different workflows (``SKIP LOCKED``), locks and loads those
workflows with two statements, fires each timer in a savepoint of its own and commits once. On the
real database with the in-memory dispatcher and a frozen clock.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dagger_django import Dagger, TriggerTaskTemplateBuilder
from dagger_django.engine import services, timers, timing
from dagger_django.models import Status, Timer, TimerStatus
from tests.helpers import stored_nodes

from ..helpers import history
from . import builders as b
from . import time_tasks as tt
from .conftest import concurrent_sweeps, reload

S = Status
T = TimerStatus

_names = itertools.count()


@pytest.fixture(autouse=True)
def dispatched(settings: Any) -> None:
    """These tests follow the fired tasks to the dispatcher: the sweep hands them to workers
    rather than running them itself (its inline run: tests/engine/test_timer_inline.py)."""
    settings.DAGGER = {**settings.DAGGER, "TIMER_RUN_INLINE": False}


def make_triggers(clock: Any, *offsets: float) -> list[Any]:
    """One workflow per offset, its only task a trigger due ``offset`` seconds from now."""
    trigger = (
        TriggerTaskTemplateBuilder(Dagger.app)
        .set_type(tt.Remind)
        .set_name("remind")
        .set_time_to_execute_lookup_key("run_at")
    )
    tmpl = b.template(
        f"TimerBatch{next(_names)}", b.process("main", b.helper.build_and_link_tasks([trigger]))
    )
    now = clock.now().timestamp()
    return [tmpl.create_instance(submit_task=True, run_at=now + s).id for s in offsets]


def timer_of(workflow_id: Any) -> Timer:
    return Timer.objects.get(workflow_id=workflow_id)


def statements(ctx: CaptureQueriesContext, word: str) -> int:
    return sum(1 for q in ctx.captured_queries if word in q["sql"].upper())


def sweep_counted(n_timers: int, clock: Any, settings: Any) -> CaptureQueriesContext:
    settings.DAGGER = {**settings.DAGGER, "TIMER_BATCH": 100}
    make_triggers(clock, *([5] * n_timers))
    clock.advance(seconds=10)
    with CaptureQueriesContext(connection) as ctx:
        assert timers.timers_fire_due() == n_timers
    return ctx


@pytest.mark.skipif(connection.vendor != "postgresql", reason="counts PostgreSQL's statements")
def test_a_batch_fires_many_workflows_timers_in_one_transaction(
    dispatcher: Any, clock: Any, settings: Any
) -> None:
    small = sweep_counted(3, clock, settings)
    Timer.objects.all().delete()
    dispatcher.runs.clear()
    large = sweep_counted(40, clock, settings)
    # One batch: claim (1) and lock + load (2), its writes, then the claim that finds nothing;
    # the same for 3 timers and for 40, and no savepoint is taken while nothing fails.
    for ctx in (small, large):
        assert statements(ctx, "FOR UPDATE") == 3  # two claims, one load of the locked rows
        assert statements(ctx, "SKIP LOCKED") == 2
        assert statements(ctx, "SAVEPOINT") == 0
    per_timer = (len(large.captured_queries) - len(small.captured_queries)) / (40 - 3)
    # The batch's writes are one statement per table (workflows, history) whatever its size.
    assert per_timer == 0
    assert len(large.captured_queries) <= 9
    assert Timer.objects.filter(status=T.FIRED).count() == 40
    assert len(dispatcher.runs) == 40
    dispatcher.drain(fire_due_timers=False)
    assert stored_nodes.filter(kind="trigger", status=S.COMPLETED).count() == 40


def test_a_sweep_commits_once_per_batch(dispatcher: Any, clock: Any, settings: Any, monkeypatch: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "TIMER_BATCH": 4}
    ids = make_triggers(clock, *range(1, 11))
    clock.advance(seconds=20)
    commits: list[int] = []
    real_commit = connection.commit

    def commit() -> None:
        commits.append(1)
        real_commit()

    monkeypatch.setattr(connection, "commit", commit)
    assert timers.timers_fire_due() == 10
    # Batches of 4, 4 and 2, then the claim that finds nothing: 4 transactions, not 11.
    assert len(commits) == 4
    runs = [wf for wf, _, _ in dispatcher.runs]
    assert runs == [str(i) for i in ids]  # earliest first, as they were due
    assert [len(history(i, "trigger_due")) for i in ids] == [1] * 10


def break_timers(monkeypatch: Any, *workflow_ids: Any) -> list[Any]:
    """Firing the triggers of these workflows raises (after its writes); returns the calls."""
    bad = set(stored_nodes.filter(workflow_id__in=workflow_ids, kind="trigger").values_list("id", flat=True))
    real_fire = timing.fire
    calls: list[Any] = []

    def fire(state: Any, node: Any, **kwargs: Any) -> None:
        calls.append(node.id)
        real_fire(state, node, **kwargs)  # its writes are rolled back with it
        if node.id in bad:
            raise RuntimeError("broken timer")

    monkeypatch.setattr(timing, "fire", fire)
    return calls


def test_a_timer_whose_firing_raises_fails_alone_and_stays_pending(
    dispatcher: Any, clock: Any, monkeypatch: Any, caplog: Any
) -> None:
    ids = make_triggers(clock, 1, 2, 3, 4, 5)
    bad = stored_nodes.get(workflow_id=ids[2], kind="trigger").id
    real_fire = timing.fire
    calls = break_timers(monkeypatch, ids[2])
    clock.advance(seconds=10)
    with CaptureQueriesContext(connection) as ctx:
        assert timers.timers_fire_due() == 4
    assert calls.count(bad) == 1  # not tried again in the same sweep
    if connection.vendor == "postgresql":  # the batch again, a savepoint per timer
        assert statements(ctx, "RELEASE SAVEPOINT") == 4
    assert "broken timer" in caplog.text
    assert [timer_of(i).status for i in ids] == [T.FIRED, T.FIRED, T.PENDING, T.FIRED, T.FIRED]
    assert timer_of(ids[2]).fired_at is None
    assert reload(ids[2]).status == S.EXECUTING
    assert stored_nodes.get(pk=bad).status == S.EXECUTING  # waiting for its time, as before
    assert history(ids[2], "trigger_due") == []
    assert [len(history(i, "trigger_due")) for i in ids] == [1, 1, 0, 1, 1]
    assert sorted(wf for wf, _, _ in dispatcher.runs) == sorted(str(i) for i in ids if i != ids[2])
    monkeypatch.setattr(timing, "fire", real_fire)
    assert timers.timers_fire_due() == 1  # the next sweep takes it
    dispatcher.drain(fire_due_timers=False)
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 5


def test_a_second_failing_timer_is_rolled_back_to_its_savepoint(
    dispatcher: Any, clock: Any, monkeypatch: Any, settings: Any, caplog: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "TIMER_BATCH": 3}
    ids = make_triggers(clock, *range(1, 9))
    bad = {ids[1], ids[3], ids[6]}  # in the first batch, in its second try, in a later batch
    calls = break_timers(monkeypatch, *bad)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 5
    trigger = {n.workflow_id: n.id for n in stored_nodes.filter(kind="trigger")}
    assert [calls.count(trigger[i]) for i in sorted(bad, key=ids.index)] == [1, 1, 1]
    assert sum("failed to fire" in r.getMessage() for r in caplog.records) == 3
    assert [timer_of(i).status for i in ids] == [T.PENDING if i in bad else T.FIRED for i in ids]
    assert Timer.objects.filter(status=T.PENDING, fired_at__isnull=False).count() == 0
    assert [len(history(i, "trigger_due")) for i in ids] == [0 if i in bad else 1 for i in ids]
    assert sorted(wf for wf, _, _ in dispatcher.runs) == sorted(str(i) for i in ids if i not in bad)


def test_a_stopped_workflows_timer_in_the_batch_is_not_fired(dispatcher: Any, clock: Any) -> None:
    ids = make_triggers(clock, 1, 2, 3)
    services.workflow_stop(workflow_id=ids[1])
    assert timer_of(ids[1]).status == T.CANCELLED
    # A leftover PENDING timer of a stopped workflow (as an older release could leave) in the batch.
    Timer.objects.filter(workflow_id=ids[1]).update(status=T.PENDING)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 3  # spent, as a no-op
    assert reload(ids[1]).status == S.STOPPED
    assert history(ids[1], "trigger_due") == []
    assert sorted(wf for wf, _, _ in dispatcher.runs) == sorted([str(ids[0]), str(ids[2])])
    dispatcher.drain(fire_due_timers=False)
    assert [reload(i).status for i in ids] == [S.COMPLETED, S.STOPPED, S.COMPLETED]


def test_two_timers_of_one_workflow_fire_in_turn_in_one_sweep(dispatcher: Any, clock: Any) -> None:
    (wf_id,) = make_triggers(clock, 5)
    others = make_triggers(clock, 5, 5)
    (first,) = Timer.objects.filter(workflow_id=wf_id)
    # A second due timer of the same workflow (say a deadline and a trigger due together): a
    # timer of another attempt, which fires as a no-op after the trigger's.
    Timer.objects.create(
        workflow_id=wf_id, node_id=first.node_id, purpose=first.purpose, due_at=first.due_at,
        attempt=first.attempt + 1, created_at=first.created_at,
    )  # fmt: skip
    clock.advance(seconds=10)
    with CaptureQueriesContext(connection) as ctx:
        assert timers.timers_fire_due() == 4
    if connection.vendor == "postgresql":
        assert statements(ctx, "SKIP LOCKED") == 3  # the second one waits for the next batch
    assert list(Timer.objects.filter(workflow_id=wf_id).values_list("status", flat=True)) == [T.FIRED] * 2
    assert len(history(wf_id, "trigger_due")) == 1
    assert sorted(wf for wf, _, _ in dispatcher.runs) == sorted(str(i) for i in [wf_id, *others])


def test_a_claim_whose_locked_timers_were_all_fired_meanwhile_does_not_end_the_sweep(
    dispatcher: Any, clock: Any, monkeypatch: Any
) -> None:
    # A concurrent sweep can commit the timers this claim's snapshot still saw pending, after the
    # snapshot and before the lock: the claim then marks none of the rows it locked. That is not
    # "nothing due", or a sweep of a burst would end at the first such race.
    ids = make_triggers(clock, 1, 2, 3)
    real_claim = timers._timers_claim_due
    stale = [([], True, 2)]

    def claim(**kwargs: Any) -> Any:
        return stale.pop() if stale else real_claim(**kwargs)

    monkeypatch.setattr(timers, "_timers_claim_due", claim)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 3
    assert not stale
    assert [timer_of(i).status for i in ids] == [T.FIRED] * 3


def test_concurrent_sweeps_fire_every_timer_exactly_once(dispatcher: Any, clock: Any, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "TIMER_BATCH": 7}
    ids = make_triggers(clock, *[1 + i / 100 for i in range(120)])
    clock.advance(seconds=60)
    counts = concurrent_sweeps(3, timeout=120)
    assert sum(counts) == 120
    assert Timer.objects.filter(status=T.FIRED).count() == 120
    assert [len(history(i, "trigger_due")) for i in ids] == [1] * 120
    assert sorted(wf for wf, _, _ in dispatcher.runs) == sorted(str(i) for i in ids)


def test_a_database_outage_ends_the_sweep_with_its_error(
    dispatcher: Any, clock: Any, monkeypatch: Any
) -> None:
    from django.db import OperationalError

    ids = make_triggers(clock, 1, 2, 3)

    def down(state: Any, node: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(timing, "fire", down)
    clock.advance(seconds=10)
    with pytest.raises(OperationalError):
        timers.timers_fire_due()
    assert [timer_of(i).status for i in ids] == [T.PENDING] * 3  # the whole batch rolled back
    assert not dispatcher.runs
