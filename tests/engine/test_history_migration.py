"""Migration 0009: history moves from one row per event (``TaskEvent``) to one row per workflow
per transaction (``HistoryRecord``), workflows in every status included, running ones too.

The test migrates the test database back to 0008, writes workflows there with the historical
models as the engine of 0008 wrote them, migrates forward and reads every history back through
``selectors.workflow_events``. Whatever happens, the database is migrated to the latest state
again before the test ends, so the tests after it see the schema they expect.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import itertools
import uuid
from typing import Any

import pytest

from dagger_django.definitions.graph import materialize
from dagger_django.engine import selectors, services
from dagger_django.models import HistoryRecord, Status

from . import builders as b
from . import tasks as t
from .conftest import migrate, migrate_to_latest, reload, restore_latest_schema

S = Status
BEFORE = ("dagger_django", "0008_delivery_heartbeat")
NAME = "MigrateHistory"
P, A, B = "main", "a_executor_task", "b_executor_task"

# What the engine of 0008 wrote, transaction by transaction: (node or None, from, to, attempt,
# reason, detail).
CREATED = [(None, S.NOT_STARTED, S.NOT_STARTED, 0, "created", {"template": NAME, "version": 1})]
STARTED = [
    *CREATED,
    (None, S.NOT_STARTED, S.EXECUTING, 0, "submitted", {}),
    (P, S.NOT_STARTED, S.EXECUTING, 0, "started", {}),
    (A, S.NOT_STARTED, S.SUBMITTED, 0, "submitted", {}),
]
CLAIMED_A = [(A, S.SUBMITTED, S.EXECUTING, 1, "claimed", {})]
RAN_A = [
    (A, S.EXECUTING, S.EXECUTING, 1, "parameters_changed", {"changed": ["trace"], "removed": []}),
    (A, S.EXECUTING, S.COMPLETED, 1, "executed", {}),
    (B, S.NOT_STARTED, S.SUBMITTED, 0, "submitted", {}),
    (B, S.SUBMITTED, S.EXECUTING, 1, "claimed", {}),
]
COMPLETED_B = [
    (B, S.EXECUTING, S.COMPLETED, 1, "executed", {}),
    (P, S.EXECUTING, S.COMPLETED, 0, "completed", {}),
    (None, S.EXECUTING, S.COMPLETED, 0, "completed", {}),
]
FAILED_B = [
    (B, S.EXECUTING, S.FAILURE, 1, "raised", {"error": "RuntimeError: boom", "traceback": "Traceback ...\n"}),
    (P, S.EXECUTING, S.FAILURE, 0, "child_failed", {}),
    (
        None,
        S.EXECUTING,
        S.FAILURE,
        0,
        "halted",
        {"error": f"{NAME}.main.b_executor_task: RuntimeError: boom"},
    ),
]
STOPPED = [
    (P, S.EXECUTING, S.STOPPED, 0, "workflow_stopped", {}),
    (A, S.EXECUTING, S.STOPPED, 1, "workflow_stopped", {}),
    (B, S.NOT_STARTED, S.STOPPED, 0, "workflow_stopped", {}),
    (None, S.EXECUTING, S.STOPPED, 0, "stopped", {}),
]
SKIPPED = [
    (P, S.EXECUTING, S.SKIPPED, 0, "skipped", {}),
    (A, S.SUBMITTED, S.SKIPPED, 0, "skipped", {}),
    (B, S.NOT_STARTED, S.SKIPPED, 0, "skipped", {}),
    (None, S.EXECUTING, S.SKIPPED, 0, "skipped", {}),
]
EDITED = [(None, S.EXECUTING, S.EXECUTING, 0, "parameters_changed", {"changed": ["note"], "removed": []})]

#: One workflow per status (two EXECUTING): its nodes' statuses and its transactions, as
#: (seconds after the start, events). Every node status occurs.
WORKFLOWS: dict[str, dict[str, Any]] = {
    "not_started": {"status": S.NOT_STARTED, "nodes": {}, "transactions": [(0, CREATED)]},
    "submitted": {
        "status": S.SUBMITTED,
        "nodes": {},
        "transactions": [(0, CREATED), (1, [(None, S.NOT_STARTED, S.SUBMITTED, 0, "submitted", {})])],
    },
    # Waits for a worker to take its first task: runs to completion after the migration.
    "executing_submitted": {
        "status": S.EXECUTING,
        "nodes": {P: S.EXECUTING, A: S.SUBMITTED},
        "params": {"fixed": True},
        "transactions": [(0, STARTED)],
    },
    # A task runs on a worker: stopped after the migration, its stop hook runs.
    "executing_running": {
        "status": S.EXECUTING,
        "nodes": {P: S.EXECUTING, A: S.EXECUTING},
        "transactions": [(0, STARTED), (1, CLAIMED_A)],
    },
    "completed": {
        "status": S.COMPLETED,
        "nodes": {P: S.COMPLETED, A: S.COMPLETED, B: S.COMPLETED},
        "transactions": [(0, STARTED), (1, CLAIMED_A), (2, RAN_A), (3, COMPLETED_B)],
    },
    # Halted on b: retried after the migration (its parameters now say fixed), it completes.
    "failure": {
        "status": S.FAILURE,
        "nodes": {P: S.FAILURE, A: S.COMPLETED, B: S.FAILURE},
        "params": {"fixed": True, "trace": [A]},
        "transactions": [(0, STARTED), (1, CLAIMED_A), (2, RAN_A), (3, FAILED_B)],
    },
    # A clock that went back: the edit at +5 s twice, apart, stays in two records, in order.
    "skipped": {
        "status": S.SKIPPED,
        "nodes": {P: S.SKIPPED, A: S.SKIPPED, B: S.SKIPPED},
        "transactions": [(0, STARTED), (5, EDITED), (2, SKIPPED), (5, EDITED)],
    },
    # Stop hooks recorded in transactions of their own; the two at +3 s follow each other with the
    # same time, so they become one record (the migration's documented merge).
    "stopped": {
        "status": S.STOPPED,
        "nodes": {P: S.STOPPED, A: S.STOPPED, B: S.STOPPED},
        "hooks": {P: "failed", A: "done"},
        "transactions": [
            (0, STARTED),
            (1, CLAIMED_A),
            (2, STOPPED),
            (
                3,
                [
                    (
                        P,
                        S.STOPPED,
                        S.STOPPED,
                        0,
                        "stop_hook_failed",
                        {"error": "RuntimeError: stop hook broke"},
                    )
                ],
            ),
            (3, [(A, S.STOPPED, S.STOPPED, 1, "stop_hook_ran", {})]),
        ],
    },
}


def _write_old_layout(apps: Any, template: Any, start: dt.datetime) -> dict[str, uuid.UUID]:
    """Every workflow of WORKFLOWS as 0008's engine left it: rows, one TaskEvent per event.

    The transactions of different workflows interleave (round robin), as they do in a running
    system, so that event ids of one workflow are not contiguous."""
    WorkflowTemplate = apps.get_model("dagger_django", "WorkflowTemplate")
    Workflow = apps.get_model("dagger_django", "Workflow")
    Node = apps.get_model("dagger_django", "Node")
    TaskEvent = apps.get_model("dagger_django", "TaskEvent")
    graph, digest = services.template_graph(template)
    version = WorkflowTemplate.objects.create(name=NAME, version=1, digest=digest, graph=graph)
    ids: dict[str, uuid.UUID] = {}
    queues = []
    for label, spec in WORKFLOWS.items():
        wid = uuid.uuid4()
        ids[label] = wid
        params = dict(spec.get("params", {}))
        materialized = materialize(template, workflow_id=wid, runtime_parameters=params)
        status = spec["status"]
        ended = status in (S.COMPLETED, S.FAILURE, S.SKIPPED, S.STOPPED)
        Workflow.objects.create(
            id=wid,
            template=version,
            template_name=NAME,
            template_class=services._class_path(template.template_type),
            status=status,
            runtime_parameters=params,
            root_node_id=materialized.root_ids[0],
            error=f"{NAME}.main.b_executor_task: RuntimeError: boom" if status == S.FAILURE else "",
            time_created=start,
            time_submitted=None if status in (S.NOT_STARTED, S.SUBMITTED) else start,
            time_completed=start if ended else None,
            updated_at=start,
        )
        by_name = {}
        for node_spec in materialized.nodes:
            short = node_spec.name.rsplit(".", 1)[-1]
            node_status = spec["nodes"].get(short, S.NOT_STARTED)
            started = node_status != S.NOT_STARTED
            by_name[short] = Node.objects.create(
                id=node_spec.id,
                workflow_id=wid,
                parent_id=node_spec.parent_id,
                name=node_spec.name,
                node_type=node_spec.node_type,
                kind=node_spec.kind,
                task_class=node_spec.task_class,
                position=node_spec.position,
                next_ids=[str(i) for i in node_spec.next_ids],
                child_ids=[str(i) for i in node_spec.child_ids],
                config=node_spec.config,
                status=node_status,
                attempts=1 if started and node_spec.kind == "executor" and node_status != S.SUBMITTED else 0,
                lease="worker-of-0008" if node_status == S.EXECUTING and node_spec.kind == "executor" else "",
                error="RuntimeError: boom"
                if node_status == S.FAILURE and node_spec.kind == "executor"
                else "",
                time_created=start,
                time_submitted=start if started else None,
                time_completed=start
                if node_status in (S.COMPLETED, S.FAILURE, S.SKIPPED, S.STOPPED)
                else None,
                updated_at=start,
                stop_hook=spec.get("hooks", {}).get(short, ""),
            )
        rows = [
            [
                TaskEvent(
                    workflow_id=wid,
                    node_id=None if node is None else by_name[node].id,
                    node_name="" if node is None else by_name[node].name,
                    from_status=frm,
                    to_status=to,
                    attempt=attempt,
                    reason=reason,
                    detail=detail,
                    created_at=start + dt.timedelta(seconds=offset),
                )
                for node, frm, to, attempt, reason, detail in events
            ]
            for offset, events in spec["transactions"]
        ]
        queues.append(rows)
    for transactions in itertools.zip_longest(*queues):
        for rows in transactions:
            if rows:
                TaskEvent.objects.bulk_create(rows)
    return ids


def _old_history(apps: Any, workflow_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """A workflow's history as 0008's ``workflow_events`` read it: its rows in id order."""
    TaskEvent = apps.get_model("dagger_django", "TaskEvent")
    fields = ("node_id", "node_name", "from_status", "to_status", "attempt", "reason", "detail", "created_at")
    return list(TaskEvent.objects.filter(workflow_id=workflow_id).order_by("id").values_list(*fields))


def _history(workflow_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return [dataclasses.astuple(e) for e in selectors.workflow_events(workflow_id=workflow_id)]


def test_history_migration_keeps_every_workflow_history_and_running_workflows_go_on(
    dispatcher: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 3 rows: the reads and the batched writes of both directions cross many chunks.
    monkeypatch.setattr(importlib.import_module("dagger_django.migrations.0009_history_records"), "CHUNK", 3)
    template = b.linear(NAME, (t.Stoppable, "a"), (t.Boom, "b"))
    start = clock.now() - dt.timedelta(hours=1)
    t.STOPPED_HOOKS.clear()
    try:
        old_apps = migrate(BEFORE)
        ids = _write_old_layout(old_apps, template, start)
        before = {label: _old_history(old_apps, wid) for label, wid in ids.items()}
        assert sum(len(h) for h in before.values()) == sum(
            len(events) for spec in WORKFLOWS.values() for _, events in spec["transactions"]
        )

        migrate_to_latest()

        for label, wid in ids.items():
            assert _history(wid) == before[label], label
        # One record per run of events with the same time: fewer rows than events, never more.
        records = {label: HistoryRecord.objects.filter(workflow_id=wid).count() for label, wid in ids.items()}
        assert records == {
            "not_started": 1,
            "submitted": 2,
            "executing_submitted": 1,
            "executing_running": 2,
            "completed": 4,
            "failure": 4,
            "skipped": 4,
            "stopped": 4,
        }

        # The running workflows go on where they were.
        waiting = ids["executing_submitted"]
        first = next(e for e in selectors.workflow_events(workflow_id=waiting) if e.node_name.endswith(A))
        assert services.node_run(workflow_id=waiting, node_id=first.node_id, lease="after-migration") == 2
        assert reload(waiting).status == S.COMPLETED

        running = ids["executing_running"]
        services.workflow_stop(workflow_id=running)
        dispatcher.drain()
        assert reload(running).status == S.STOPPED
        assert t.STOPPED_HOOKS == [A]

        failed = ids["failure"]
        services.workflow_retry(workflow_id=failed)
        dispatcher.drain()
        assert reload(failed).status == S.COMPLETED

        # Their history is what was migrated, then what happened since, in order.
        for label in ("executing_submitted", "executing_running", "failure"):
            after = _history(ids[label])
            assert after[: len(before[label])] == before[label], label
            assert len(after) > len(before[label]), label
        moves = [
            (e[0] is None, e[2], e[3], e[5]) for e in _history(running)[len(before["executing_running"]) :]
        ]
        assert (True, S.EXECUTING, S.STOPPED, "stopped") in moves
        assert moves[-1][1:] == (S.STOPPED, S.STOPPED, "stop_hook_ran")
        assert _history(waiting)[-1][2:4] == (S.EXECUTING, S.COMPLETED)

        # Unapplied, every record becomes rows again: the same history, event for event.
        now = {label: _history(wid) for label, wid in ids.items()}
        old_apps = migrate(BEFORE)
        assert {label: _old_history(old_apps, wid) for label, wid in ids.items()} == now
    finally:
        restore_latest_schema()
    assert {label: _history(wid) for label, wid in ids.items()} == now
