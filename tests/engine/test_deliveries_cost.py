"""What the W2 path (message -> listener -> next task) no longer pays, and that it still holds:
the bridge's array inserts (keys in order, defaults, statuses as stored), key extraction without
an event loop, a payload checked once, a delivery's work without a workflow view, a hook's lazy
view as of its claim, and run_nodes messages split evenly.

On the real database with the in-memory dispatcher and a frozen clock.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import connection, transaction

from dagger_django.engine import correlation, messages, services, state, txn
from dagger_django.models import Delivery, DeliveryStatus, InboxMessage, InboxStatus, Status

from . import listener_tasks as lt
from .conftest import reload
from .test_batch_listeners import waiting
from .test_correlation import executor, listener, process, registry, route, start, template  # noqa: F401

S = Status


def binds(monkeypatch: pytest.MonkeyPatch, binary: bool) -> None:
    """Arrays in binary (when the connection binds server-side, as by default) or as text."""
    if binary and not state._binary_params(connection):
        pytest.skip("the connection quotes parameters client-side (DB_SERVER_SIDE_BINDING=0)")
    if not binary:
        monkeypatch.setattr(state, "_binary_params", lambda conn: False)


@pytest.mark.parametrize("binary", [True, False])
def test_insert_arrays_calls_a_callable_default_once_per_row(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch, binary: bool
) -> None:
    from dagger_django.models import OutboxMessage

    binds(monkeypatch, binary)
    now = messages.ports.now()
    rows = [{"kind": "send", "topic": "t", "created_at": now} for _ in range(3)]
    with transaction.atomic():
        ids = state.insert_arrays(OutboxMessage, rows, returning_ids=True)
    stored = list(OutboxMessage.objects.filter(pk__in=ids).values_list("message_id", "headers", "status"))
    # message_id defaults to a new uuid4 (unique): one each, not one shared by the batch.
    assert len({m for m, _, _ in stored}) == 3
    assert {(h == [], st) for _, h, st in stored} == {(True, "pending")}


@pytest.mark.parametrize("binary", [True, False])
def test_insert_arrays_writes_rows_in_order_with_defaults_and_returns_their_keys(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch, binary: bool
) -> None:
    binds(monkeypatch, binary)
    now = messages.ports.now()
    rows = [
        {
            "source": "kafka",
            "topic": "t",
            "partition": 0,
            "offset": i,
            "payload": None if i == 1 else {"n": i, "nested": ["x", {"y": None}]},
            "raw": b"\x00bytes" if i == 2 else None,
            "headers": {"h": "v"},
            "status": InboxStatus.ROUTED if i else InboxStatus.INVALID,
            "received_at": now,
            "updated_at": now,
        }
        for i in range(5)
    ]
    with transaction.atomic():
        ids = state.insert_arrays(InboxMessage, rows, returning_ids=True)
    assert ids == sorted(ids) and len(set(ids)) == 5
    stored = {m.pk: m for m in InboxMessage.objects.filter(pk__in=ids)}
    for i, pk in enumerate(ids):
        m = stored[pk]
        assert (m.offset, m.headers, m.incarnation, m.reason, m.matched, m.replayed_at) == (
            i,
            {"h": "v"},
            "",
            "",
            0,
            None,
        )
        assert m.payload == (None if i == 1 else {"n": i, "nested": ["x", {"y": None}]})
        assert (bytes(m.raw) if m.raw is not None else None) == (b"\x00bytes" if i == 2 else None)
        # A text choice is stored as its value, never as its name.
        assert InboxMessage.objects.filter(pk=pk, status="routed" if i else "invalid").exists()
    wf = start(template("ArrayInsert", process("p", listener(lt.Ready, "wait"))), dispatcher, order_id="a")
    node_id = next(n for n in statuses_nodes(wf.id) if n.kind == "listener").id
    with transaction.atomic():
        assert (
            state.insert_arrays(
                Delivery,
                [
                    {
                        "message_id": pk,
                        "workflow_id": wf.id,
                        "node_id": node_id,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for pk in ids
                ],
            )
            == []
        )
    deliveries = list(Delivery.objects.filter(node_id=node_id).order_by("id"))
    # Keys ascend with the rows' order (a listener takes its deliveries in key order).
    assert [d.message_id for d in deliveries] == ids
    assert {(d.status, d.lease, d.attempts, d.outcome, d.redispatches) for d in deliveries} == {
        (DeliveryStatus.PENDING, "", 0, "", 0)
    }
    assert state.insert_arrays(Delivery, []) == []


def statuses_nodes(workflow_id: Any) -> list[Any]:
    from dagger_django.engine.state import nodes_read

    return nodes_read(workflow_id)


class AsyncKey(lt.Ready):
    async def get_correlatable_key(self, payload: Any) -> Any:
        return ("order_id", payload["order_id"])


class ManyKeys(lt.Ready):
    async def get_correlatable_keys_from_payload(self, payload: Any) -> list[Any]:
        return [("order_id", payload["order_id"]), ("order_id", payload.get("other", "-"))]


def test_keys_come_from_get_correlatable_key_directly_unless_the_wrappers_are_overridden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listeners = correlation.TopicListeners(topic="pizza_ready", classes=(lt.Ready, AsyncKey, ManyKeys))
    loops: list[Any] = []
    real = correlation.call_hook

    def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        loops.append(getattr(fn, "__name__", fn))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(correlation, "call_hook", counting)
    keys = correlation.extract_keys(listeners, {"order_id": "o1", "other": "o2"})
    assert keys.pairs == [("order_id", "o1"), ("order_id", "o2")]
    # The base class's async wrappers are skipped; an override of them is called as before.
    assert loops == ["get_correlatable_key", "get_correlatable_key", "get_correlatable_keys_from_payload"]


def test_a_payload_the_codec_checked_is_not_checked_again_and_others_are(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    start(template("CheckedOnce", process("p", listener(lt.Ready, "wait"))), dispatcher, order_id="c1")
    checked: list[Any] = []
    real = messages._unstorable

    def counting(payload: Any) -> Any:
        checked.append(payload)
        return real(payload)

    monkeypatch.setattr(messages, "_unstorable", counting)
    payload, reason, _ = messages.decode_json(b'{"order_id": "c1"}')
    assert reason == "" and len(checked) == 1
    decoded = messages.Incoming(topic="pizza_ready", payload=payload, partition=3, offset=1, storable=True)
    assert messages.messages_route([decoded])[0].status == "routed"
    assert len(checked) == 1  # routing trusted the codec's check
    nul = messages.Incoming(topic="pizza_ready", payload={"order_id": "c1\x00"}, partition=3, offset=2)
    result = messages.messages_route([nul])[0]
    assert (result.status, result.reason) == ("invalid", "nul_character")  # not marked: checked


def test_a_delivery_carries_no_view_and_a_hook_sees_its_workflow_as_claimed(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    real_build = txn.work_build

    def recording(state_: Any, node: Any, task: Any, **kwargs: Any) -> Any:
        work = real_build(state_, node, task, **kwargs)
        built.append(work)
        return work

    monkeypatch.setattr(txn, "work_build", recording)
    workflows, targets = waiting("NoViewForDeliveries", 3, "nv", dispatcher)
    services.nodes_run(targets=targets, lease="noview")
    deliveries = [w for w in built if w.delivery is not None]
    executors = [w for w in built if w.delivery is None]
    assert len(deliveries) == 3 and len(executors) == 3
    assert all(w.view is None for w in deliveries)
    for work in executors:
        # Built when first read (after commit), as the claim left the workflow: the listener
        # done, this task running; not as the apply that followed left it.
        tasks = {t.task_name.rsplit(".", 1)[-1]: t.status.code for t in work.view.tasks.values()}
        assert tasks["wait_listener_task"] == S.COMPLETED
        assert tasks["next_executor_task"] == S.EXECUTING
        assert work.view.get_task(work.node_id).status.code == S.EXECUTING
    for wf in workflows:
        assert reload(wf.id).status == S.COMPLETED


def test_run_nodes_messages_are_split_evenly(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagger_django import tasks
    from dagger_django.adapters.celery import CeleryDispatcher

    settings.DAGGER = {**getattr(settings, "DAGGER", {}), "DISPATCH_BATCH": 50}
    sent: list[int] = []
    monkeypatch.setattr(tasks.run_nodes, "apply_async", lambda args, **kw: sent.append(len(args[0])))
    monkeypatch.setattr(tasks.run_node, "apply_async", lambda args, **kw: sent.append(1))
    targets = [(uuid.uuid4(), uuid.uuid4()) for _ in range(101)]
    for count, expected in ((60, [30, 30]), (50, [50]), (101, [34, 34, 33]), (51, [26, 25]), (2, [2])):
        sent.clear()
        CeleryDispatcher().run_nodes(targets=targets[:count])
        assert sent == expected


@pytest.mark.parametrize("enabled", [True, False])
def test_a_starting_worker_process_freezes_what_it_loaded(settings: Any, enabled: bool) -> None:
    import gc

    from celery.signals import worker_init, worker_process_init

    from dagger_django import tasks

    settings.DAGGER = {**getattr(settings, "DAGGER", {}), "WORKER_GC_FREEZE": enabled}
    gc.unfreeze()
    try:
        assert tasks._gc_freeze in [r() for _, r in worker_process_init.receivers]
        assert tasks._gc_freeze in [r() for _, r in worker_init.receivers]
        tasks._gc_freeze()  # what both signals call (not every receiver of the signal)
        assert (gc.get_freeze_count() > 0) is enabled
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("binary", [True, False])
def test_update_rows_of_many_workflows_is_one_statement_and_writes_each_its_own(
    dispatcher: Any, monkeypatch: pytest.MonkeyPatch, binary: bool
) -> None:
    from django.test.utils import CaptureQueriesContext

    from dagger_django.models import Workflow

    binds(monkeypatch, binary)
    tmpl = template(f"UpdateArrays{binary}", process("p", listener(lt.Ready, "wait")))
    rows = [reload(start(tmpl, dispatcher, order_id=f"u{binary}{i}").id) for i in range(3)]
    for i, wf in enumerate(rows):
        wf.runtime_parameters = {"i": i, "deep": {"list": [i, None, "x"]}}
        wf.business_key = None if i == 1 else f"key-{i}"
        wf.status = Status.STOPPED
    with transaction.atomic(), CaptureQueriesContext(connection) as ctx:
        state.update_rows(Workflow, ["runtime_parameters", "business_key", "status"], rows)
    if connection.vendor == "postgresql":
        assert len(ctx.captured_queries) == 1 and "unnest" in ctx.captured_queries[0]["sql"]
    for i, wf in enumerate(rows):
        stored = reload(wf.id)
        assert stored.runtime_parameters == {"i": i, "deep": {"list": [i, None, "x"]}}
        assert stored.business_key == (None if i == 1 else f"key-{i}")
        assert Workflow.objects.filter(pk=wf.id, status="STOPPED").exists()
