"""``checkpoint="process"``: consecutive executor tasks of a process run in one worker call and
are committed once; after a crash they all run again (docs/execution-model.md#checkpoints)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dagger_django.engine import recovery, services
from dagger_django.exceptions import InvalidTemplate
from dagger_django.models import Status
from tests.helpers import stored_nodes

from ..helpers import history
from . import builders as b
from . import tasks as t
from .conftest import reload

S = Status


@pytest.fixture(autouse=True)
def effects() -> Iterator[list[tuple[str, str]]]:
    t.EFFECTS.clear()
    yield t.EFFECTS
    t.EFFECTS.clear()


def chained(name: str, *steps: str, checkpoint: str = "process", then: str | None = None) -> Any:
    main = b.process("main", b.chain(*[(t.Effect, s) for s in steps]))
    processes = [main] if then is None else [main, b.process("then", b.chain((t.Effect, then)))]
    return b.helper.generic_template(
        template_name=name, root_process=b.helper.build_and_link_processes(processes), checkpoint=checkpoint
    )


def transactions(ctx: CaptureQueriesContext) -> int:
    """Transactions that locked a workflow (one lock statement each on PostgreSQL)."""
    return sum(1 for q in ctx.captured_queries if "FOR UPDATE" in q["sql"])


def run_first(dispatcher: Any) -> int:
    wf, node, lease = dispatcher.runs.popleft()
    return services.node_run(workflow_id=wf, node_id=node, lease=lease)


def test_a_process_chain_runs_in_one_call_and_commits_once(dispatcher: Any) -> None:
    wf = chained("ChainOnce", "a", "b", "c").create_instance(submit_task=True)
    with CaptureQueriesContext(connection) as ctx:
        assert run_first(dispatcher) == 3
    if connection.vendor == "postgresql":
        assert transactions(ctx) == 2  # the claim of a, then one apply of a, b and c
    row = reload(wf.id)
    assert row.status == S.COMPLETED
    # Each step saw what the one before it left, and has its own attempt and key.
    assert row.runtime_parameters["trace"] == ["a_executor_task", "b_executor_task", "c_executor_task"]
    nodes = {n.name.rsplit(".", 1)[-1]: n for n in stored_nodes.filter(workflow_id=wf.id, kind="executor")}
    assert [key for _, key in t.EFFECTS] == [f"{nodes[s + '_executor_task'].id}:1" for s in "abc"]
    # The history still has every step, claimed and executed.
    ids = {n.id for n in nodes.values()}
    reasons = [(e.node_name, e.reason) for e in history(wf.id) if e.node_id in ids]
    assert [r for _, r in reasons if r in ("claimed", "executed")] == ["claimed", "executed"] * 3


def test_the_default_commits_every_task(dispatcher: Any) -> None:
    chained("ChainDefault", "a", "b", "c", checkpoint="task").create_instance(submit_task=True)
    with CaptureQueriesContext(connection) as ctx:
        assert run_first(dispatcher) == 3
    if connection.vendor == "postgresql":
        assert transactions(ctx) == 4


def test_a_chain_ends_with_its_process(dispatcher: Any) -> None:
    wf = chained("ChainTwoProcesses", "a", "b", then="c").create_instance(submit_task=True)
    with CaptureQueriesContext(connection) as ctx:
        assert run_first(dispatcher) == 3
    if connection.vendor == "postgresql":
        # claim a; apply a and b (claiming c inline); apply c ("then" keeps the default)
        assert transactions(ctx) == 3
    assert reload(wf.id).status == S.COMPLETED


def test_a_process_can_choose_its_own_checkpoint(dispatcher: Any) -> None:
    process = b.helper.generic_process_builder(
        process_name="p", root_task=b.chain((t.Effect, "a")), checkpoint="process"
    )
    tmpl = b.helper.generic_template(template_name="ChainPerProcess", root_process=process.build())
    wf = tmpl.create_instance()
    config = stored_nodes.get(workflow_id=wf.id, kind="process").config
    assert config["checkpoint"] == "process"
    with pytest.raises(InvalidTemplate, match="checkpoint"):
        b.helper.generic_template(template_name="Bad", root_process=process.build(), checkpoint="step")


def test_a_failing_step_ends_the_chain_and_what_ran_before_it_is_kept(dispatcher: Any) -> None:
    main = b.process("main", b.chain((t.Effect, "a"), (t.Boom, "b"), (t.Effect, "c")))
    tmpl = b.helper.generic_template(
        template_name="ChainBoom", root_process=main.build(), checkpoint="process"
    )
    wf = tmpl.create_instance(submit_task=True)
    run_first(dispatcher)
    row = reload(wf.id)
    assert row.status == S.FAILURE
    assert row.runtime_parameters["trace"] == ["a_executor_task"]
    assert [name for name, _ in t.EFFECTS] == ["a_executor_task"]


def test_a_crash_before_the_commit_runs_the_whole_chain_again(
    dispatcher: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = chained("ChainCrash", "a", "b", "c").create_instance(submit_task=True)
    target = dispatcher.runs.popleft()

    def died(*args: Any, **kwargs: Any) -> None:
        raise SystemExit("the worker died before the chain was committed")

    monkeypatch.setattr(services, "_apply_chain", died)
    with pytest.raises(SystemExit):
        services.node_run(workflow_id=target[0], node_id=target[1], lease=target[2])
    monkeypatch.undo()
    assert [name for name, _ in t.EFFECTS] == ["a_executor_task", "b_executor_task", "c_executor_task"]
    first = stored_nodes.get(workflow_id=wf.id, name__endswith="a_executor_task")
    assert (first.status, first.attempts) == (S.EXECUTING, 1)  # nothing but the claim was committed

    clock.advance(seconds=float(recovery.dagger_settings.LEASE_SECONDS) + 1)
    recovery.nodes_recover()
    dispatcher.drain()
    row = reload(wf.id)
    assert row.status == S.COMPLETED
    assert row.runtime_parameters["trace"] == ["a_executor_task", "b_executor_task", "c_executor_task"]
    # Every step ran twice (the documented risk); a second attempt of a, first ones of b and c.
    assert [name for name, _ in t.EFFECTS] == ["a_executor_task", "b_executor_task", "c_executor_task"] * 2
    assert t.EFFECTS[3][1].endswith(":2") and t.EFFECTS[4][1].endswith(":1")


def test_a_workflow_stopped_during_the_chain_discards_it(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = chained("ChainStopped", "a", "b", "c").create_instance(submit_task=True)
    real_execute = services._execute

    def execute(work: Any) -> Any:
        if work.name.endswith("b_executor_task"):
            services.workflow_stop(workflow_id=work.workflow_id)  # an operator, meanwhile
        return real_execute(work)

    monkeypatch.setattr(services, "_execute", execute)
    run_first(dispatcher)
    row = reload(wf.id)
    assert row.status == S.STOPPED
    assert "trace" not in row.runtime_parameters  # nothing of the chain was applied
    assert not history(wf.id, "executed")


def test_chains_in_a_batch(dispatcher: Any) -> None:
    tmpl = chained("ChainBatch", "a", "b", "c")
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(4)]
    targets = [(w, n) for w, n, _ in dispatcher.runs]
    dispatcher.runs.clear()
    with CaptureQueriesContext(connection) as ctx:
        assert services.nodes_run(targets=targets, lease="chains").steps == 12
    if connection.vendor == "postgresql":
        assert transactions(ctx) == 2  # four workflows, three steps each: one claim, one apply
    assert [reload(wf.id).status for wf in workflows] == [S.COMPLETED] * 4
