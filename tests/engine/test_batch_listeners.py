"""Batches of listener deliveries (``services.nodes_run``): the writes of a batch's workflows to
the deliveries and the subscriptions are made with one statement per step for the whole batch,
and a workflow whose step fails, or whose delivery was taken over, leaves out its own writes alone.

On the real database with the in-memory dispatcher and a frozen clock.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dagger_django.engine import messages, services, txn
from dagger_django.models import Delivery, DeliveryStatus, Status, Subscription, Workflow

from ..helpers import history
from . import listener_tasks as lt
from .conftest import reload, statuses
from .test_correlation import executor, listener, process, registry, route, start, template  # noqa: F401

S = Status
D = DeliveryStatus
TABLE = re.compile(r'^(?:\d+ times: )?(?:UPDATE|DELETE FROM|INSERT INTO)\s+"(\w+)"')
TABLES = [f"dagger_django_{name}" for name in ("delivery", "subscription", "workflow", "historyrecord")]


def waiting(name: str, count: int, tag: str, dispatcher: Any) -> tuple[list[Any], list[tuple[str, str]]]:
    """``count`` workflows P[listener -> executor] whose listener has a message: the workflows,
    and the ``run_nodes`` targets the routing queued."""
    tmpl = template(name, process("main", listener(lt.Ready, "wait"), executor(lt.Deliver, "next")))
    workflows = [start(tmpl, dispatcher, order_id=f"{tag}-{i}") for i in range(count)]
    for i in range(count):
        assert route("pizza_ready", {"order_id": f"{tag}-{i}", "n": i}).matched == 1
    targets = [(wf, node) for wf, node, _ in dispatcher.runs]
    dispatcher.runs.clear()
    assert len(targets) == count
    return workflows, targets


def writes(ctx: CaptureQueriesContext, table: str) -> int:
    return sum(1 for q in ctx.captured_queries if (m := TABLE.match(q["sql"])) and m.group(1) == table)


def statements(ctx: CaptureQueriesContext) -> int:
    return sum(1 for q in ctx.captured_queries if not q["sql"].startswith(("BEGIN", "COMMIT")))


def test_a_batch_of_listeners_writes_each_table_once_per_step_whatever_its_size(
    dispatcher: Any,
) -> None:
    counted: dict[int, CaptureQueriesContext] = {}
    for size in (2, 10):
        workflows, targets = waiting(f"ListenerBatch{size}", size, f"lb{size}", dispatcher)
        with CaptureQueriesContext(connection) as ctx:
            services.nodes_run(targets=targets, lease=f"size{size}")
        counted[size] = ctx
        for wf in workflows:
            assert reload(wf.id).status == S.COMPLETED
            assert not Subscription.objects.filter(workflow_id=wf.id).exists()
            assert Delivery.objects.get(workflow_id=wf.id).status == D.DELIVERED
        assert not [q for q in ctx.captured_queries if q["sql"].startswith("SAVEPOINT")]
    if connection.vendor != "postgresql":
        return
    small, large = counted[2], counted[10]
    # Each step writes each table once for the whole batch (an executemany or one UPDATE ... FROM
    # unnest): the claim its deliveries; the listeners' apply their deliveries, subscriptions,
    # workflow rows (their nodes in them) and history (and claims the executors inline); the
    # executors' apply the workflows' subscriptions, rows and history. Before, each workflow made
    # ten statements of its own.
    for ctx in (small, large):
        assert [writes(ctx, table) for table in TABLES] == [2, 2, 2, 2]
    assert statements(large) == statements(small)


def test_a_listener_apply_that_raises_in_a_batch_leaves_its_delivery_and_subscription(
    dispatcher: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflows, targets = waiting("ListenerApplyRaises", 4, "raise", dispatcher)
    poisoned = workflows[2].id
    real_stage = messages.outbox.stage

    def stage(state: Any, node: Any, sends: Any) -> None:
        if state.workflow.id == poisoned:
            raise RuntimeError("poison")  # after the delivery's write was noted
        real_stage(state, node, sends)

    monkeypatch.setattr(messages.outbox, "stage", stage)
    services.nodes_run(targets=targets, lease="raises")
    for wf in workflows:
        if wf.id == poisoned:
            continue
        assert reload(wf.id).status == S.COMPLETED
        assert Delivery.objects.get(workflow_id=wf.id).status == D.DELIVERED
        assert not Subscription.objects.filter(workflow_id=wf.id).exists()
    # The poisoned workflow's apply was rolled back with its deferred writes: the delivery is
    # still claimed (the sweep takes it back after its lease), the listener still subscribed.
    delivery = Delivery.objects.get(workflow_id=poisoned)
    assert (delivery.status, delivery.outcome, delivery.attempts) == (D.CLAIMED, "", 1)
    assert Subscription.objects.filter(workflow_id=poisoned).count() == 1
    assert statuses(poisoned)["wait_listener_task"] == S.EXECUTING
    assert not history(poisoned, "message_received")

    monkeypatch.setattr(messages.outbox, "stage", real_stage)
    clock.advance(seconds=float(messages.dagger_settings.DELIVERY_LEASE_SECONDS) + 1)
    assert messages.deliveries_redispatch() == 1
    dispatcher.drain()
    assert reload(poisoned).status == S.COMPLETED
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (D.DELIVERED, 2)
    assert not Subscription.objects.filter(workflow_id=poisoned).exists()


def test_a_listener_claim_that_raises_in_a_batch_leaves_its_delivery_pending(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflows, targets = waiting("ListenerClaimRaises", 3, "claim", dispatcher)
    poisoned = workflows[0].id
    real_build = txn.work_build

    def work_build(state: Any, *args: Any, **kwargs: Any) -> Any:
        if state.workflow.id == poisoned:
            raise RuntimeError("poison")  # after the claim's write was noted
        return real_build(state, *args, **kwargs)

    monkeypatch.setattr(txn, "work_build", work_build)
    services.nodes_run(targets=targets, lease="claims")
    assert [reload(wf.id).status for wf in workflows] == [S.EXECUTING, S.COMPLETED, S.COMPLETED]
    delivery = Delivery.objects.get(workflow_id=poisoned)
    assert (delivery.status, delivery.lease, delivery.attempts) == (D.PENDING, "", 0)


def test_a_delivery_taken_over_while_on_message_ran_is_dropped_alone(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflows, targets = waiting("ListenerTakenOver", 4, "taken", dispatcher)
    taken = workflows[1].id
    real_execute = messages.delivery_execute

    def execute(work: Any) -> Any:
        outcome = real_execute(work)
        if work.workflow_id == taken:  # the sweep took the claim back meanwhile (a dead worker's)
            Delivery.objects.filter(pk=work.delivery.id).update(status=D.PENDING, lease="")
        return outcome

    monkeypatch.setattr(messages, "delivery_execute", execute)
    with CaptureQueriesContext(connection) as ctx:
        services.nodes_run(targets=targets, lease="taken")
    for wf in workflows:
        if wf.id != taken:
            assert reload(wf.id).status == S.COMPLETED
            assert Delivery.objects.get(workflow_id=wf.id).status == D.DELIVERED
    # Its result was dropped, as when it runs alone: nothing of its apply was written.
    assert statuses(taken)["wait_listener_task"] == S.EXECUTING
    assert "seen" not in reload(taken).runtime_parameters
    delivery = Delivery.objects.get(workflow_id=taken)
    assert (delivery.status, delivery.lease) == (D.PENDING, "")
    assert Subscription.objects.filter(workflow_id=taken).count() == 1
    assert not history(taken, "message_received")
    if connection.vendor == "postgresql":  # found by the batch's write, applied again with savepoints
        assert any(q["sql"].startswith("SAVEPOINT") for q in ctx.captured_queries)


def test_workflows_deleted_on_completion_by_their_listener_are_deleted_in_a_batch(
    dispatcher: Any, settings: Any
) -> None:
    """The delivery is closed before the workflow row goes (taking its deliveries along): the
    guarded write must not find it gone and take the result for a stale one."""
    settings.DAGGER = {"DELETE_WORKFLOW_ON_COMPLETE": True}
    tmpl = template("ListenerDeleted", process("main", listener(lt.Ready, "wait")))
    workflows = [start(tmpl, dispatcher, order_id=f"deleted-{i}") for i in range(3)]
    for i in range(3):
        assert route("pizza_ready", {"order_id": f"deleted-{i}"}).matched == 1
    targets = [(wf, node) for wf, node, _ in dispatcher.runs]
    dispatcher.runs.clear()
    services.nodes_run(targets=targets[:2], lease="deleted")
    services.node_run(workflow_id=targets[2][0], node_id=targets[2][1], lease="deleted-alone")
    assert not Workflow.objects.filter(pk__in=[wf.id for wf in workflows]).exists()
    assert not Delivery.objects.exists() and not Subscription.objects.exists()


def test_a_later_write_to_one_noted_delivery_leaves_the_others_of_its_first_write_alone() -> None:
    """Rows noted together get a record each: a second write to one of them is that row's only."""
    import uuid
    from types import SimpleNamespace

    state = SimpleNamespace(delivery_writes={})
    node = SimpleNamespace(id=uuid.uuid4())
    messages._note_write(state, node, [1, 2], status=D.BUFFERED, lease="", expires_at=None)  # type: ignore[arg-type]
    messages._note_write(state, node, [1], status=D.CLAIMED, lease="mine", attempts=1)  # type: ignore[arg-type]

    assert state.delivery_writes[1].fields["status"] == D.CLAIMED
    assert state.delivery_writes[2].fields == {"status": D.BUFFERED, "lease": "", "expires_at": None}
