"""Batched transitions (``services.nodes_run``): the steps of many workflows share transactions.

What a worker does with a ``run_nodes`` message, on the real database with the in-memory
dispatcher and a frozen clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dagger_django.engine import heartbeat, outbox, recovery, selectors, services
from dagger_django.models import HistoryRecord, Status
from dagger_django.models.history import history_fields
from tests.helpers import stored_nodes

from ..helpers import history
from . import builders as b
from . import tasks as t
from .conftest import reload

S = Status


def queued(dispatcher: Any) -> list[tuple[str, str]]:
    """The queued runs as ``run_nodes`` targets (taken off the in-memory queue)."""
    targets = [(wf, node) for wf, node, _ in dispatcher.runs]
    dispatcher.runs.clear()
    return targets


def lock_statements(ctx: CaptureQueriesContext) -> int:
    return sum(1 for q in ctx.captured_queries if "FOR UPDATE" in q["sql"])


def test_a_batch_runs_every_workflow_in_one_transaction_per_step(dispatcher: Any) -> None:
    tmpl = b.linear("BatchLinear", (t.Record, "a"), (t.Record, "b"), (t.Record, "c"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(6)]
    with CaptureQueriesContext(connection) as ctx:
        done = services.nodes_run(targets=queued(dispatcher), lease="batch")
    assert done.steps == 18 and done.retry_in == 0
    if connection.vendor == "postgresql":  # one claim, three applies: one lock statement each
        assert lock_statements(ctx) == 4
    for wf in workflows:
        row = reload(wf.id)
        assert row.status == S.COMPLETED
        assert row.runtime_parameters["trace"] == ["a_executor_task", "b_executor_task", "c_executor_task"]
        # One history row per workflow per transaction: its creation, the claim, three applies.
        assert HistoryRecord.objects.filter(workflow_id=wf.id).count() == 5
    assert not dispatcher.runs
    assert set(stored_nodes.filter(kind="executor").values_list("attempts", flat=True)) == {1}


def test_statements_per_workflow_stay_small_in_a_batch(dispatcher: Any) -> None:
    tmpl = b.linear("BatchCost", (t.Record, "a"), (t.Record, "b"), (t.Record, "c"))
    for _ in range(10):
        tmpl.create_instance(submit_task=True)
    with CaptureQueriesContext(connection) as ctx:
        services.nodes_run(targets=queued(dispatcher), lease="cost")
    # Per transaction, whatever the number of workflows: BEGIN, lock, load, COMMIT, and one
    # statement per table written (an executemany of the workflows' rows): the workflow rows
    # (one per set of fields written), their nodes, their history records.
    assert len(ctx.captured_queries) <= 4 * 4 + 4 * 3


def test_a_hook_that_raises_fails_only_its_own_workflow(dispatcher: Any) -> None:
    tmpl = b.linear("BatchBoom", (t.Record, "a"), (t.Boom, "b"), (t.Record, "c"))
    good = [tmpl.create_instance(submit_task=True, fixed=True) for _ in range(3)]
    bad = tmpl.create_instance(submit_task=True)
    services.nodes_run(targets=queued(dispatcher), lease="boom")
    assert [reload(wf.id).status for wf in good] == [S.COMPLETED] * 3
    assert reload(bad.id).status == S.FAILURE


def test_an_apply_that_raises_rolls_back_only_its_workflow_and_recovery_finishes_it(
    dispatcher: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpl = b.linear("BatchPoison", (t.Record, "a"), (t.Record, "b"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(4)]
    poisoned = workflows[1].id
    real_complete = services._complete

    def complete(state: Any, node: Any, work: Any, outcome: Any) -> None:
        if state.workflow.id == poisoned:
            raise RuntimeError("poison")
        real_complete(state, node, work, outcome)

    monkeypatch.setattr(services, "_complete", complete)
    services.nodes_run(targets=queued(dispatcher), lease="poison")
    assert [reload(wf.id).status for wf in workflows] == [S.COMPLETED, S.EXECUTING, S.COMPLETED, S.COMPLETED]
    # Its apply was rolled back whole: the step is still claimed, nothing of it was written.
    node = stored_nodes.get(workflow_id=poisoned, name__endswith="a_executor_task")
    assert (node.status, node.attempts) == (S.EXECUTING, 1)
    assert not history(poisoned, "executed")

    monkeypatch.setattr(services, "_complete", real_complete)
    clock.advance(seconds=float(recovery.dagger_settings.LEASE_SECONDS) + 1)
    recovery.nodes_recover()
    dispatcher.drain()
    row = reload(poisoned)
    assert row.status == S.COMPLETED
    assert row.runtime_parameters["trace"] == ["a_executor_task", "b_executor_task"]
    assert stored_nodes.get(pk=node.pk).attempts == 2


def test_a_workflow_rolled_back_in_a_batch_leaves_no_history_row(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpl = b.linear("BatchHistory", (t.Record, "a"), (t.Record, "b"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(3)]
    poisoned = workflows[1].id
    real_after_flush = outbox.after_flush

    def after_flush(state: Any) -> None:
        # Fails once the workflow's rows, its history row included, are written: on its apply.
        if state.workflow.id == poisoned and any(e.reason == "executed" for e in _events(state)):
            raise RuntimeError("poison after the flush")
        real_after_flush(state)

    monkeypatch.setattr(outbox, "after_flush", after_flush)
    services.nodes_run(targets=queued(dispatcher), lease="history")

    assert [reload(wf.id).status for wf in workflows] == [S.COMPLETED, S.EXECUTING, S.COMPLETED]
    # The claim committed; the apply, flushed then rolled back to its savepoint, left nothing.
    assert HistoryRecord.objects.filter(workflow_id=poisoned).count() == 2
    assert [e.reason for e in history(poisoned)][-1] == "claimed"
    assert not history(poisoned, "executed")


def _events(state: Any) -> list[Any]:
    return [selectors.Event(*history_fields(e), state.now) for e in state.events]


def test_a_batch_takes_no_savepoint_while_nothing_raises(dispatcher: Any) -> None:
    tmpl = b.linear("BatchPlain", (t.Record, "a"), (t.Record, "b"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(5)]
    with CaptureQueriesContext(connection) as ctx:
        services.nodes_run(targets=queued(dispatcher), lease="plain")
    assert [reload(wf.id).status for wf in workflows] == [S.COMPLETED] * 5
    assert not [q["sql"] for q in ctx.captured_queries if q["sql"].startswith(("SAVEPOINT", "RELEASE"))]


def test_a_claim_that_raises_leaves_out_only_its_workflow(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tmpl = b.linear("BatchBadClaim", (t.Record, "a"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(4)]
    poisoned = workflows[2].id
    real_claim_node = services.claim_node

    def claim_node(state: Any, node: Any, lease: str, **kwargs: Any) -> Any:
        work = real_claim_node(state, node, lease, **kwargs)  # its writes are rolled back with it
        if state.workflow.id == poisoned:
            raise RuntimeError("poison")
        return work

    monkeypatch.setattr(services, "claim_node", claim_node)
    with CaptureQueriesContext(connection) as ctx:
        done = services.nodes_run(targets=queued(dispatcher), lease="badclaim")
    assert done.steps == 3
    assert [reload(wf.id).status for wf in workflows] == [S.COMPLETED, S.COMPLETED, S.EXECUTING, S.COMPLETED]
    node = stored_nodes.get(workflow_id=poisoned, name__endswith="a_executor_task")
    assert (node.status, node.attempts) == (S.SUBMITTED, 0)  # left to recovery, nothing written
    assert not history(poisoned, "claimed")
    assert "claiming node" in caplog.text
    if connection.vendor == "postgresql":  # the claim again, a savepoint per workflow
        sql = [q["sql"] for q in ctx.captured_queries]
        assert sum(q.startswith("SAVEPOINT") for q in sql) == 4
        assert sum(q.startswith("ROLLBACK TO SAVEPOINT") for q in sql) == 1


def test_a_second_node_of_a_workflow_in_the_batch_runs_after_it(dispatcher: Any) -> None:
    tmpl = b.parallel_tasks(
        "BatchGroup", b.JOIN_ALL, b.task(t.SetFlag, "left").build(), b.task(t.SetFlag, "right").build()
    )
    group_wf = tmpl.create_instance(submit_task=True)
    others = [b.linear("BatchSide", (t.Record, "a")).create_instance(submit_task=True) for _ in range(2)]
    targets = queued(dispatcher)
    assert [wf for wf, _ in targets].count(str(group_wf.id)) == 2  # both branches are queued
    services.nodes_run(targets=targets, lease="group")
    dispatcher.batch = True
    dispatcher.drain()
    assert reload(group_wf.id).status == S.COMPLETED
    assert reload(group_wf.id).runtime_parameters["left_executor_task"] is True
    assert [reload(wf.id).status for wf in others] == [S.COMPLETED] * 2


def test_a_redelivered_batch_reruns_only_what_it_had_claimed_and_not_applied(
    dispatcher: Any, clock: Any
) -> None:
    tmpl = b.linear("BatchAgain", (t.Record, "a"), (t.Record, "b"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(3)]
    targets = queued(dispatcher)
    # The first delivery finished the first workflow, then claimed the others and died.
    services.node_run(workflow_id=targets[0][0], node_id=targets[0][1], lease="again:0")
    claimed = services._claim_batch(
        [(workflows[i].id, stored_nodes.get(pk=targets[i][1]).id, f"again:{i}") for i in (1, 2)],
        services.BatchRun(),
    )
    assert len(claimed) == 2
    # Redelivered at once: the claims' heartbeat is fresh, nothing runs, come back later.
    again = services.nodes_run(targets=targets, lease="again")
    assert again.steps == 0 and again.retry_in > 0
    clock.advance(seconds=heartbeat.stale_after() + 1)
    again = services.nodes_run(targets=targets, lease="again")
    assert again.steps == 4  # a and b of the two unfinished workflows; nothing of the first
    assert [reload(wf.id).status for wf in workflows] == [S.COMPLETED] * 3
    attempts = {
        wf.id: stored_nodes.get(workflow_id=wf.id, name__endswith="a_executor_task").attempts
        for wf in workflows
    }
    assert attempts == {workflows[0].id: 1, workflows[1].id: 2, workflows[2].id: 2}
    assert reload(workflows[0].id).runtime_parameters["trace"] == ["a_executor_task", "b_executor_task"]


def test_in_batch_mode_decisions_and_groups_behave_as_one_by_one(dispatcher: Any) -> None:
    dispatcher.batch = True
    left = b.decision("BatchDecide").create_instance(submit_task=True, branch=0)
    right = b.decision("BatchDecide").create_instance(submit_task=True, branch=1)
    group = b.parallel_tasks(
        "BatchAny", b.ATLEAST_ONE, b.task(t.SetFlag, "one").build(), b.task(t.SetFlag, "two").build()
    ).create_instance(submit_task=True)
    dispatcher.drain()
    assert reload(left.id).runtime_parameters["trace"] == [
        "left_executor_task",
        "left_after_executor_task",
        "final_executor_task",
    ]
    assert reload(right.id).runtime_parameters["trace"] == ["right_executor_task", "final_executor_task"]
    assert reload(group.id).status == S.COMPLETED


def test_a_deadlock_in_a_batch_apply_applies_again_without_running_the_hooks_again(
    dispatcher: Any, monkeypatch: Any
) -> None:
    from django.db import OperationalError

    class Deadlock(Exception):
        sqlstate = "40P01"

    t.EFFECTS.clear()
    tmpl = b.linear("BatchDeadlock", (t.Effect, "a"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(3)]
    real = services._apply_batch_in
    calls: list[int] = []

    def apply(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the database broke a deadlock by ending this transaction
            raise OperationalError("deadlock detected") from Deadlock()
        return real(*args, **kwargs)

    monkeypatch.setattr(services, "_apply_batch_in", apply)
    done = services.nodes_run(targets=queued(dispatcher), lease="batch")
    assert done.steps == 3 and len(calls) == 2
    assert [reload(wf.id).status for wf in workflows] == [S.COMPLETED] * 3
    assert len(t.EFFECTS) == 3  # each hook ran once

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("the server closed the connection")  # no conflict: not retried here

    monkeypatch.setattr(services, "_apply_batch_in", broken)
    tmpl.create_instance(submit_task=True)
    with pytest.raises(OperationalError):
        services.nodes_run(targets=queued(dispatcher), lease="batch-2")
