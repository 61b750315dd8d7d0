"""Migration 0010: node state moves from one ``Node`` row per node into the workflow row
(``Workflow.nodes``) and ``NodePage`` rows, workflows in every status included, running ones too.

The test migrates the test database back to 0011, writes workflows there with the historical
models as the engine of 0011 left them (a node row each, with leases, owed sends, stop hooks and
a pending retry timer; one workflow of 203 nodes), migrates forward, compares every node field
and the columns recovery reads, then lets the running workflows go on: a waiting task is run,
recovery finds the stranded and the owed ones and the pending stop hook, a failed workflow is
retried. Unapplied, the documents become the same rows again. Whatever happens, the database is
migrated to the latest state again before the test ends.
"""

from __future__ import annotations

import datetime as dt
import importlib
import uuid
from typing import Any

import pytest

from dagger_django.definitions.graph import materialize
from dagger_django.engine import recovery, services
from dagger_django.engine.state import PAGE_SIZE, nodes_read
from dagger_django.models import Status, Workflow

from . import builders as b
from . import tasks as t
from .conftest import migrate, migrate_to_latest, reload, restore_latest_schema

S = Status
BEFORE = ("dagger_django", "0011_inbox_replayed_by")
NAME = "MigrateNodes"
P, A, B = "main", "a_executor_task", "b_executor_task"
EXTRA = 200  # extra nodes of the large workflow: 203 in all, four pages

#: One workflow per status, and the running cases recovery cares about: nodes' statuses, and
#: per node extra fields (``lease``, ``redispatch_at``, ``stop_hook``, ``attempts``).
WORKFLOWS: dict[str, dict[str, Any]] = {
    "not_started": {"status": S.NOT_STARTED, "nodes": {}},
    "submitted": {"status": S.SUBMITTED, "nodes": {}},
    # Waits for a worker to take its first task: run to completion after the migration.
    "executing_submitted": {
        "status": S.EXECUTING,
        "nodes": {P: S.EXECUTING, A: S.SUBMITTED},
        "params": {"fixed": 1},
    },
    # Its worker died an hour ago: recovery hands it out again.
    "stranded": {
        "status": S.EXECUTING,
        "nodes": {P: S.EXECUTING, A: S.EXECUTING},
        "extra": {A: {"lease": "worker-of-0009", "attempts": 1}},
        "params": {"fixed": 1},
    },
    # Its message could not be sent: owed, sent by the next sweep.
    "owed": {
        "status": S.EXECUTING,
        "nodes": {P: S.EXECUTING, A: S.SUBMITTED},
        "extra": {A: {"redispatch_at": "start"}},
        "params": {"fixed": 1},
    },
    # Waits on its retry's timer: recovery leaves it alone.
    "retry_wait": {
        "status": S.EXECUTING,
        "nodes": {P: S.EXECUTING, A: S.SUBMITTED},
        "extra": {A: {"attempts": 1}},
        "timer": A,
    },
    "completed": {
        "status": S.COMPLETED,
        "nodes": {P: S.COMPLETED, A: S.COMPLETED, B: S.COMPLETED},
        "large": True,
    },
    # Halted on b: retried after the migration (its parameters now say fixed), it completes.
    "failure": {
        "status": S.FAILURE,
        "nodes": {P: S.FAILURE, A: S.COMPLETED, B: S.FAILURE},
        "params": {"fixed": True},
    },
    "skipped": {"status": S.SKIPPED, "nodes": {P: S.SKIPPED, A: S.SKIPPED, B: S.SKIPPED}},
    # Stopped while a ran: its stop hook is PENDING (the message was lost): recovery sends it.
    "stopped": {
        "status": S.STOPPED,
        "nodes": {P: S.STOPPED, A: S.STOPPED, B: S.STOPPED},
        "extra": {A: {"stop_hook": "pending", "attempts": 1}},
    },
}

#: The node table's columns before 0012: the migration's own frozen list of what it moves.
COLUMNS = importlib.import_module("dagger_django.migrations.0012_node_state_in_workflow").FIELDS


def _write_old_layout(apps: Any, template: Any, start: dt.datetime) -> dict[str, uuid.UUID]:
    """Every workflow of WORKFLOWS as the engine before 0012 left it: a row per node."""
    WorkflowTemplate = apps.get_model("dagger_django", "WorkflowTemplate")
    OldWorkflow = apps.get_model("dagger_django", "Workflow")
    Node = apps.get_model("dagger_django", "Node")
    Timer = apps.get_model("dagger_django", "Timer")
    graph, digest = services.template_graph(template)
    version = WorkflowTemplate.objects.create(name=NAME, version=1, digest=digest, graph=graph)
    ids: dict[str, uuid.UUID] = {}
    for label, spec in WORKFLOWS.items():
        wid = uuid.uuid4()
        ids[label] = wid
        params = dict(spec.get("params", {}))
        materialized = materialize(template, workflow_id=wid, runtime_parameters=params)
        status = spec["status"]
        ended = status in (S.COMPLETED, S.FAILURE, S.SKIPPED, S.STOPPED)
        OldWorkflow.objects.create(
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
            has_timers="timer" in spec,
        )
        rows = []
        for node_spec in materialized.nodes:
            short = node_spec.name.rsplit(".", 1)[-1]
            node_status = spec["nodes"].get(short, S.NOT_STARTED)
            extra = dict(spec.get("extra", {}).get(short, {}))
            if extra.get("redispatch_at") == "start":
                extra["redispatch_at"] = start
            rows.append(
                Node(
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
                    error="RuntimeError: boom"
                    if node_status == S.FAILURE and node_spec.kind == "executor"
                    else "",
                    time_created=start,
                    time_submitted=start if node_status != S.NOT_STARTED else None,
                    time_completed=start
                    if node_status in (S.COMPLETED, S.FAILURE, S.SKIPPED, S.STOPPED)
                    else None,
                    updated_at=start,
                    **extra,
                )
            )
            if spec.get("timer") == short:
                Timer.objects.create(
                    workflow_id=wid,
                    node_id=node_spec.id,
                    purpose="retry",
                    due_at=start + dt.timedelta(days=1),
                    attempt=1,
                    created_at=start,
                )
        if spec.get("large"):
            process = rows[0]
            rows.extend(
                Node(
                    workflow_id=wid,
                    parent_id=process.id,
                    name=f"{NAME}.main.extra_{i}",
                    node_type="LEAF",
                    kind="executor",
                    task_class=rows[1].task_class,
                    position=10 + i,
                    config={"template_name": f"extra_{i}", "n": i},
                    status=S.COMPLETED,
                    time_created=start,
                    time_submitted=start,
                    time_completed=start,
                    updated_at=start + dt.timedelta(seconds=i),
                )
                for i in range(EXTRA)
            )
        Node.objects.bulk_create(rows)
    return ids


def _old_nodes(apps: Any, workflow_id: uuid.UUID) -> list[tuple[Any, ...]]:
    Node = apps.get_model("dagger_django", "Node")
    return list(Node.objects.filter(workflow_id=workflow_id).order_by("position").values_list(*COLUMNS))


def _nodes(workflow_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return [
        tuple(getattr(n, c) for c in COLUMNS)
        for n in sorted(nodes_read(workflow_id), key=lambda n: n.position)
    ]


def test_node_state_migration_moves_every_workflow_and_running_workflows_go_on(
    dispatcher: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 3: the reads and the batched writes of both directions cross many chunks.
    monkeypatch.setattr(
        importlib.import_module("dagger_django.migrations.0012_node_state_in_workflow"), "CHUNK", 3
    )
    template = b.linear(NAME, (t.Stoppable, "a"), (t.Boom, "b"))
    start = clock.now() - dt.timedelta(hours=1)
    t.STOPPED_HOOKS.clear()
    try:
        old_apps = migrate(BEFORE)
        ids = _write_old_layout(old_apps, template, start)
        before = {label: _old_nodes(old_apps, wid) for label, wid in ids.items()}
        assert len(before["completed"]) == 3 + EXTRA

        migrate_to_latest()

        for label, wid in ids.items():
            assert _nodes(wid) == before[label], label
        rows = {wf.id: wf for wf in Workflow.objects.all()}
        pages = {label: rows[wid].node_pages for label, wid in ids.items()}
        assert pages["completed"] == (3 + EXTRA - 1) // PAGE_SIZE == 3
        assert {label for label, n in pages.items() if n} == {"completed"}
        marks = {
            label: (rows[wid].leased_since, rows[wid].resend_at, rows[wid].stop_hooks_since)
            for label, wid in ids.items()
        }
        assert marks["executing_submitted"] == marks["stranded"] == (start, None, None)
        assert marks["owed"] == (None, start, None)
        assert marks["stopped"] == (None, None, start)
        assert marks["retry_wait"] == (None, None, None)  # waits on its timer
        assert {n.name.rsplit(".", 1)[-1]: n.waiting for n in nodes_read(ids["retry_wait"])}[A] == 1
        for label in ("not_started", "submitted", "completed", "failure", "skipped"):
            assert marks[label] == (None, None, None), label

        # The running workflows go on where they were.
        waiting = ids["executing_submitted"]
        first = next(n for n in nodes_read(waiting) if n.name.endswith(A))
        assert services.node_run(workflow_id=waiting, node_id=first.id, lease="after-migration") == 2
        assert reload(waiting).status == S.COMPLETED
        # Recovery finds by the new indexes: the stranded task, the owed one, the lost stop hook
        # (and not the one waiting on its timer).
        assert recovery.nodes_recover() == 3
        sent = {wf_id for wf_id, _, _ in dispatcher.runs}
        assert sent == {str(ids["stranded"]), str(ids["owed"])}
        dispatcher.drain()
        for label in ("stranded", "owed"):
            assert reload(ids[label]).status == S.COMPLETED, label
        assert t.STOPPED_HOOKS == [A]
        assert reload(ids["retry_wait"]).status == S.EXECUTING

        failed = ids["failure"]
        services.workflow_retry(workflow_id=failed)
        dispatcher.drain()
        assert reload(failed).status == S.COMPLETED

        # Unapplied, every document becomes rows again, field for field.
        now = {label: _nodes(wid) for label, wid in ids.items()}
        old_apps = migrate(BEFORE)
        assert {label: _old_nodes(old_apps, wid) for label, wid in ids.items()} == now
    finally:
        restore_latest_schema()
    assert {label: _nodes(wid) for label, wid in ids.items()} == now
