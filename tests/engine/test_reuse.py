"""A batch's next transaction takes the workflows its last one wrote from memory
(``engine/state.py``, ``Reuse``) when nobody wrote them since, and loads them otherwise.

On PostgreSQL, with the in-memory dispatcher and a frozen clock. Every transaction that finds
kept workflows checks them against a fresh read of the committed rows first: what is reused is
exactly what was committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dagger_django.engine import heartbeat, services
from dagger_django.engine.state import PAGE_SIZE, Reuse, node_encode, nodes_read_many
from dagger_django.models import NodePage, Status, Workflow
from tests.helpers import stored_nodes

from . import builders as b
from . import tasks as t
from .conftest import reload
from .test_batch import queued
from .test_checkpoint import chained

S = Status

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")


def _comparable(wf: Workflow) -> dict[str, Any]:
    return {f.attname: getattr(wf, f.attname) for f in Workflow._meta.concrete_fields if f.attname != "nodes"}


class Checked(Reuse):
    """A :class:`Reuse` that checks what it kept against the committed rows before each lock."""

    made: list[Checked] = []

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0
        self.rounds: list[tuple[int, int]] = []  # (reused, loaded) per transaction
        Checked.made.append(self)

    def lock(self, workflow_ids: Any) -> Any:
        if self.kept:
            fresh = nodes_read_many(self.kept)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT id, xmin::text::bigint FROM {Workflow._meta.db_table} WHERE id = ANY(%s)",
                    [list(self.kept)],
                )
                versions = dict(cursor.fetchall())
            for workflow_id, (xid, wf, nodes) in self.kept.items():
                if versions.get(workflow_id) != xid:  # someone else wrote it: loaded again
                    continue
                assert _comparable(Workflow.objects.get(pk=workflow_id)) == _comparable(wf)
                assert [node_encode(n) for n in nodes] == [node_encode(n) for n in fresh[workflow_id]]
                assert [(n.id, n.page) for n in nodes] == [(n.id, n.page) for n in fresh[workflow_id]]
                self.checked += 1
        before = (self.reused, self.loaded)
        out = super().lock(workflow_ids)
        self.rounds.append((self.reused - before[0], self.loaded - before[1]))
        return out


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Checked]]:
    Checked.made = []
    monkeypatch.setattr(services, "Reuse", Checked)
    yield Checked.made


def narrow(ctx: CaptureQueriesContext) -> int:
    return sum(1 for q in ctx.captured_queries if "xmin" in q["sql"] and "FOR UPDATE" in q["sql"])


def full_loads(ctx: CaptureQueriesContext) -> int:
    return sum(1 for q in ctx.captured_queries if "FOR UPDATE" in q["sql"] and "xmin" not in q["sql"])


def test_a_batch_reuses_what_it_wrote_when_nobody_wrote_since(
    dispatcher: Any, checked: list[Checked]
) -> None:
    tmpl = b.linear("ReuseLinear", (t.Record, "a"), (t.Record, "b"), (t.Record, "c"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(6)]
    with CaptureQueriesContext(connection) as ctx:
        done = services.nodes_run(targets=queued(dispatcher), lease="reuse")
    assert done.steps == 18
    # The claim loads; each of the three applies locks with the narrow statement only.
    assert (full_loads(ctx), narrow(ctx)) == (1, 3)
    [reuse] = checked
    assert reuse.rounds == [(0, 6), (6, 0), (6, 0), (6, 0)]
    assert reuse.checked == 18
    for wf in workflows:
        row = reload(wf.id)
        assert row.status == S.COMPLETED
        assert row.runtime_parameters["trace"] == ["a_executor_task", "b_executor_task", "c_executor_task"]
    assert set(stored_nodes.filter(kind="executor").values_list("attempts", flat=True)) == {1}


def test_a_write_by_someone_else_between_the_transactions_makes_it_load(
    dispatcher: Any, checked: list[Checked], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpl = b.linear("ReuseOther", (t.Record, "a"), (t.Record, "b"), (t.Record, "c"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(4)]
    operated, beaten = workflows[1].id, workflows[2].id
    real_execute = services._execute

    def execute(work: Any) -> Any:
        if work.workflow_id == operated and work.name.endswith("a_executor_task"):
            # An operator changes the parameters while the hook runs (its own transaction).
            services.workflow_update_parameters(workflow_id=operated, changes={"operator": "yes"})
        if work.workflow_id == beaten and work.name.endswith("b_executor_task"):
            # The lease's heartbeat (another thread's transaction in a worker).
            lease = stored_nodes.get(workflow_id=beaten, name__endswith="b_executor_task").lease
            assert heartbeat._node_beat(beaten, work.node_id, lease) == 1
        return real_execute(work)

    monkeypatch.setattr(services, "_execute", execute)
    services.nodes_run(targets=queued(dispatcher), lease="other")
    [reuse] = checked
    # The claim loads 4; the apply of a reloads the operated one, that of b the beaten one.
    assert reuse.rounds == [(0, 4), (3, 1), (3, 1), (4, 0)]
    for wf in workflows:
        row = reload(wf.id)
        assert row.status == S.COMPLETED
        assert row.runtime_parameters["trace"] == ["a_executor_task", "b_executor_task", "c_executor_task"]
    assert reload(operated).runtime_parameters["operator"] == "yes"  # not lost to a stale copy


def test_a_row_written_from_another_connection_is_loaded_again(
    dispatcher: Any, checked: list[Checked], monkeypatch: pytest.MonkeyPatch, django_db_blocker: Any
) -> None:
    import psycopg

    tmpl = b.linear("ReuseConn", (t.Record, "a"), (t.Record, "b"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(3)]
    target = workflows[0].id
    real_execute = services._execute
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)

    def execute(work: Any) -> Any:
        if work.workflow_id == target and work.name.endswith("a_executor_task"):
            with psycopg.connect(**params, autocommit=True) as other:
                other.execute(
                    f"UPDATE {Workflow._meta.db_table} SET business_key = 'other' WHERE id = %s", [target]
                )
        return real_execute(work)

    monkeypatch.setattr(services, "_execute", execute)
    services.nodes_run(targets=queued(dispatcher), lease="conn")
    [reuse] = checked
    assert reuse.rounds == [(0, 3), (2, 1), (3, 0)]
    assert reload(target).business_key == "other"
    assert all(reload(wf.id).status == S.COMPLETED for wf in workflows)


def test_a_rolled_back_attempt_keeps_nothing(
    dispatcher: Any, checked: list[Checked], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpl = b.linear("ReuseRollback", (t.Record, "a"), (t.Record, "b"), (t.Record, "c"))
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(4)]
    poisoned = workflows[2].id
    real_complete = services._complete

    def complete(state: Any, node: Any, work: Any, outcome: Any) -> None:
        real_complete(state, node, work, outcome)
        if state.workflow.id == poisoned and node.name.endswith("b_executor_task"):
            raise RuntimeError("poison after the others' changes were made in memory")

    monkeypatch.setattr(services, "_complete", complete)
    services.nodes_run(targets=queued(dispatcher), lease="rollback")
    [reuse] = checked
    # claim; apply a (kept); apply b: reused, raised, rolled back; again with savepoints: loaded,
    # nothing kept; apply c of the three others: loaded.
    assert reuse.rounds == [(0, 4), (4, 0), (4, 0), (0, 4), (0, 3)]
    for wf in workflows:
        row = reload(wf.id)
        if wf.id == poisoned:
            assert row.status == S.EXECUTING
            assert row.runtime_parameters["trace"] == ["a_executor_task"]
        else:
            assert row.status == S.COMPLETED
            assert row.runtime_parameters["trace"] == [
                "a_executor_task",
                "b_executor_task",
                "c_executor_task",
            ]
    assert set(
        stored_nodes.filter(kind="executor", status=S.COMPLETED).values_list("attempts", flat=True)
    ) == {1}


def test_a_process_chain_does_not_change_what_is_kept(dispatcher: Any, checked: list[Checked]) -> None:
    tmpl = chained("ReuseChain", "a", "b", "c", then="d")
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(3)]
    services.nodes_run(targets=queued(dispatcher), lease="chain")
    [reuse] = checked
    # The claim of a; one apply of a, b and c (claiming d); the apply of d: reused.
    assert reuse.rounds == [(0, 3), (3, 0), (3, 0)]
    assert reuse.checked == 6
    for wf in workflows:
        row = reload(wf.id)
        assert row.status == S.COMPLETED
        assert row.runtime_parameters["trace"] == [f"{s}_executor_task" for s in "abcd"]


def test_workflows_with_further_pages_of_nodes(
    dispatcher: Any, checked: list[Checked], settings: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "INLINE_STEPS": 200}
    count = PAGE_SIZE + 6
    tmpl = b.linear("ReusePages", *[(t.Record, f"s{i}") for i in range(count)])
    workflows = [tmpl.create_instance(submit_task=True) for _ in range(2)]
    assert NodePage.objects.filter(workflow_id=workflows[0].id).exists()
    done = services.nodes_run(targets=queued(dispatcher), lease="pages")
    assert done.steps == 2 * count
    [reuse] = checked
    # Loaded (the first page and the further ones) by the claim only, then reused each time:
    # the steps on the second page write it and the row together.
    assert reuse.rounds == [(0, 2)] + [(2, 0)] * count
    assert reuse.checked == 2 * count
    for wf in workflows:
        row = reload(wf.id)
        assert row.status == S.COMPLETED
        assert len(row.runtime_parameters["trace"]) == count
    assert stored_nodes.filter(kind="executor", status=S.COMPLETED).count() == 2 * count


def test_the_sweep_applies_the_triggers_it_fired_from_memory(
    dispatcher: Any, clock: Any, checked: list[Checked], monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from dagger_django.engine import timers

    from .test_timer_inline import make_triggers

    monkeypatch.setattr(timers, "Reuse", Checked)
    settings.DAGGER = {**settings.DAGGER, "TIMER_BATCH": 100}
    ids = make_triggers(clock, 5, after=True)
    clock.advance(seconds=10)
    assert timers.timers_fire_due() == 5
    reuse, *rest = checked  # one per batch: the second finds nothing due
    assert all(not r.rounds for r in rest)
    # The firing transaction loads (and claims the triggers); the apply of the triggers (which
    # claims "after") and that of "after" take them from memory.
    assert reuse.rounds == [(0, 5), (5, 0), (5, 0)]
    assert reuse.checked == 10
    assert [reload(i).status for i in ids] == [S.COMPLETED] * 5
