"""End to end, with a real Celery worker: an operator resumes a stopped workflow and completes a
failed task, and the worker takes the workflow on to COMPLETED (engine/operations.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dagger_django.engine import operations, services
from dagger_django.models import Status, StopHook, Workflow
from tests.helpers import stored_nodes

from ..helpers import history, wait_for
from . import workflows as w
from .test_worker import finished, one_process, step

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
S = Status


def test_a_workflow_stopped_mid_task_is_resumed_and_the_worker_completes_it(
    celery_worker_process: Any, tmp_path: Path
) -> None:
    tmpl = one_process("E2EResume", step(w.Blocks, "blocks"), step(w.Step, "after"))
    marker, release = tmp_path / "marker", tmp_path / "release"
    wf = tmpl.create_instance(submit_task=True, marker=str(marker), release=str(release))
    wait_for(marker.exists, timeout=30, message="the blocking task never started")
    services.workflow_stop(workflow_id=wf.id)
    release.write_text("go")
    blocks = stored_nodes.get(workflow_id=wf.id, name__endswith="blocks_executor_task")
    # The stop hook runs on the worker after the stop's commit; resume waits for it.
    wait_for(
        lambda: stored_nodes.get(pk=blocks.pk).stop_hook == StopHook.DONE,
        message=lambda: f"the stop hook of blocks is {stored_nodes.get(pk=blocks.pk).stop_hook!r}",
    )

    operations.workflow_resume(workflow_id=wf.id, actor="ops", reason="the supplier is back")

    done = finished(wf.id)
    assert done.status == S.COMPLETED, done.error
    assert done.runtime_parameters["trace"] == ["after_executor_task"]
    assert done.runtime_parameters["attempts_seen"] == [2]  # the stopped run's result was discarded
    (resumed,) = [e for e in history(wf.id, "resumed") if e.node_id is None]
    assert resumed.detail == {"actor": "ops", "reason": "the supplier is back"}


def test_a_failed_task_completed_by_an_operator_lets_the_worker_finish_the_workflow(
    celery_worker_process: Any,
) -> None:
    tmpl = one_process(
        "E2EComplete", step(w.Step, "a"), step(w.FailsUntilFixed, "fragile"), step(w.Step, "c")
    )
    wf = finished(tmpl.create_instance(submit_task=True).id)
    assert wf.status == S.FAILURE
    fragile = stored_nodes.get(workflow_id=wf.id, name__endswith="fragile_executor_task")

    operations.node_complete(workflow_id=wf.id, node_id=fragile.id, actor="ops", reason="done by hand")

    wait_for(
        lambda: Workflow.objects.get(pk=wf.id).status == S.COMPLETED,
        message=lambda: f"workflow is {Workflow.objects.get(pk=wf.id).status}",
    )
    done = Workflow.objects.get(pk=wf.id)
    assert done.runtime_parameters["trace"] == ["a_executor_task", "c_executor_task"]
    assert stored_nodes.get(pk=fragile.pk).status == S.COMPLETED
    assert history(wf.id, "completed_by_operator")[0].detail == {"actor": "ops", "reason": "done by hand"}
