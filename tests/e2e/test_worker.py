"""End to end: a real Celery worker process, PostgreSQL and Redis, one test per task kind."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DecisionTaskTemplateBuilder,
    ParallelCompositeProcessTemplateDagBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    TaskOperator,
)
from dagger_django.engine import services
from dagger_django.models import Status, Workflow
from tests.helpers import stored_nodes

from ..helpers import history, wait_for
from . import workflows as w

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
S = Status
helper = DAGBuilderHelper(dagger_app=Dagger.app)


def step(cls: type, name: str) -> Any:
    return helper.generic_executor_task_builder(task_type=cls, name=name)


def one_process(name: str, *steps: Any) -> Any:
    root = helper.build_and_link_tasks(list(steps))
    return helper.generic_template(
        template_name=name,
        root_process=helper.generic_process_builder(process_name="main", root_task=root).build(),
    )


def finished(workflow_id: Any, timeout: float = 30) -> Workflow:
    terminal = {S.COMPLETED, S.FAILURE, S.STOPPED, S.SKIPPED}
    wait_for(
        lambda: Workflow.objects.filter(pk=workflow_id, status__in=terminal).exists(),
        timeout=timeout,
        message=f"workflow {workflow_id} did not finish",
    )
    return Workflow.objects.get(pk=workflow_id)


def test_executor_chain_runs_on_the_worker(celery_worker_process: Any) -> None:
    tmpl = one_process("E2ELinear", step(w.Step, "a"), step(w.AsyncFlag, "b"), step(w.Step, "c"))
    wf = finished(tmpl.create_instance(submit_task=True).id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["a_executor_task", "c_executor_task"]
    assert wf.runtime_parameters["b_executor_task"] != os.getpid()  # ran in the worker process


def test_decision_and_parallel_groups_on_the_worker(celery_worker_process: Any) -> None:
    left = step(w.Step, "left").build()
    right = step(w.Step, "right").build()
    decide = DecisionTaskTemplateBuilder(Dagger.app).set_type(w.Choose).set_name("decide")
    decide.set_next(left)
    decide.set_next(right)
    group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 2, step(w.AsyncFlag, "copy").build())
    group.set_type(ParallelCompositeTask).set_name("fan").set_task_operator(TaskOperator.JOIN_ALL)
    group.set_next(decide.build())
    tmpl = helper.generic_template(
        template_name="E2EDecideParallel",
        root_process=helper.generic_process_builder(process_name="main", root_task=group.build()).build(),
    )
    wf = finished(tmpl.create_instance(submit_task=True, branch=1).id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["right_executor_task"]
    copies = stored_nodes.filter(workflow_id=wf.id, name__endswith="copy_executor_task")
    assert [n.status for n in copies] == [S.COMPLETED, S.COMPLETED]
    assert stored_nodes.get(workflow_id=wf.id, name__endswith="left_executor_task").status == S.SKIPPED


def test_process_level_parallel_and_dynamic_processes_on_the_worker(celery_worker_process: Any) -> None:
    group = ParallelCompositeProcessTemplateDagBuilder(Dagger.app)
    group.set_name("shipping").set_type(ParallelCompositeTask).set_parallel_operator_type(
        TaskOperator.ATLEAST_ONE
    )
    group.set_parallel_process_templates(
        helper.generic_process_builder(process_name="ship", root_task=step(w.Step, "ship").build()).build()
    )
    dynamic = helper.generic_dynamic_process_builder(name="prepare")
    root = helper.build_and_link_processes([dynamic, group])
    tmpl = helper.generic_template(template_name="E2EDynamic", root_process=root)
    prepare = [
        helper.generic_process_builder(process_name=f"prep{i}", root_task=step(w.Step, f"prep{i}").build())
        for i in range(2)
    ]
    wf = tmpl.create_instance(
        submit_task=True,
        dynamic_process_builders={"prepare": prepare},
        parallel_process_templates={
            "shipping": (
                3,
                helper.generic_process_builder(process_name="ship", root_task=step(w.Step, "ship").build()),
            )
        },
    )
    wf = finished(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"][:2] == ["prep0_executor_task", "prep1_executor_task"]
    assert stored_nodes.filter(workflow_id=wf.id, kind="process", name__endswith=".ship").count() == 3


def test_failure_then_retry_from_the_failed_task_on_the_worker(celery_worker_process: Any) -> None:
    tmpl = one_process("E2ERetry", step(w.Step, "a"), step(w.FailsUntilFixed, "fragile"), step(w.Step, "c"))
    wf = finished(tmpl.create_instance(submit_task=True).id)
    assert wf.status == S.FAILURE and "not fixed yet" in wf.error
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    services.workflow_retry(workflow_id=wf.id)
    wf = finished(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["a_executor_task", "c_executor_task"]


def test_retry_policy_with_backoff_on_the_worker(celery_worker_process: Any) -> None:
    tmpl = one_process("E2EBackoff", step(w.RetriedQuickly, "flaky"))
    wf = finished(tmpl.create_instance(submit_task=True).id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["succeeded_on"] == 3
    assert len(history(wf.id, "retry_scheduled")) == 2


def test_stop_on_the_worker_stops_waiting_work(celery_worker_process: Any, tmp_path: Path) -> None:
    tmpl = one_process("E2EStop", step(w.Blocks, "blocks"), step(w.Step, "after"))
    marker, release = tmp_path / "marker", tmp_path / "release"
    wf = tmpl.create_instance(submit_task=True, marker=str(marker), release=str(release))
    wait_for(marker.exists, timeout=30, message="the blocking task never started")
    services.workflow_stop(workflow_id=wf.id)
    release.write_text("go")
    wf = finished(wf.id)
    assert wf.status == S.STOPPED
    wait_for(
        lambda: not stored_nodes.filter(workflow_id=wf.id, status__in=[S.SUBMITTED, S.EXECUTING]).exists(),
        message="nodes still running after stop",
    )
    assert "attempts_seen" not in Workflow.objects.get(pk=wf.id).runtime_parameters


def test_executor_killed_mid_task_runs_again_and_completes(
    celery_worker_process: Any, tmp_path: Path
) -> None:
    tmpl = one_process("E2EKill", step(w.Blocks, "blocks"), step(w.Step, "after"))
    marker, release = tmp_path / "marker", tmp_path / "release"
    wf = tmpl.create_instance(submit_task=True, marker=str(marker), release=str(release))
    wait_for(marker.exists, timeout=30, message="the blocking task never started")
    pid, attempt = (int(x) for x in marker.read_text().split())
    assert attempt == 1
    os.kill(pid, signal.SIGKILL)  # the pool child dies; acks_late + reject_on_worker_lost requeue
    marker.unlink()
    wait_for(marker.exists, timeout=60, message="the task was not delivered again after the kill")
    release.write_text("go")
    wf = finished(wf.id, timeout=60)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["attempts_seen"] == [2]
    assert wf.runtime_parameters["trace"] == ["after_executor_task"]


def test_trigger_waits_for_its_time_on_the_worker(celery_worker_process: Any) -> None:
    import time

    from dagger_django import TriggerTaskTemplateBuilder

    trigger = TriggerTaskTemplateBuilder(Dagger.app).set_type(w.When).set_name("when")
    trigger.set_time_to_execute_lookup_key("run_at")
    tmpl = one_process("E2ETrigger", step(w.Step, "a"), trigger, step(w.Step, "c"))
    run_at = time.time() + 1.5
    wf = finished(tmpl.create_instance(submit_task=True, run_at=run_at).id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["a_executor_task", "when", "c_executor_task"]
    assert wf.runtime_parameters["fired_at"] >= run_at


def test_worker_keeps_its_database_connection_across_tasks(celery_worker_process: Any) -> None:
    """Celery 5.7 closes Django's connections around every task unless CELERY_DB_REUSE_MAX is set
    (config/celery.py sets it): a pool process must reuse one PostgreSQL session for its tasks."""
    tmpl = one_process("E2ESessions", step(w.DatabaseSession, "a"), step(w.DatabaseSession, "b"))
    backends: dict[int, set[int]] = {}
    for _ in range(5):
        wf = finished(tmpl.create_instance(submit_task=True).id)
        assert wf.status == S.COMPLETED
        for process, backend in wf.runtime_parameters["sessions"]:
            backends.setdefault(process, set()).add(backend)
    assert sum(len(b) for b in backends.values()) == len(backends), backends  # one session per process


def test_worker_killed_in_a_batch_reruns_only_what_it_had_not_committed(
    celery_worker_process: Any, tmp_path: Path
) -> None:
    from dagger_django.engine import ports

    tmpl = one_process("E2EBatchKill", step(w.Step, "a"), step(w.Blocks, "b"))
    released = tmp_path / "released"
    released.write_text("go")
    markers = [tmp_path / f"marker-{i}" for i in range(3)]
    release = [released, tmp_path / "release-1", released]
    workflows = [tmpl.create_instance(marker=str(markers[i]), release=str(release[i])).id for i in range(3)]
    with ports.dispatch_in_batches():  # the three first steps go in one run_nodes message
        for workflow_id in workflows:
            services.workflow_submit(workflow_id=workflow_id)
    # The batch applied every `a` (claiming each `b` inline), ran the first `b`, and blocks in the
    # second: kill the pool process there.
    wait_for(markers[1].exists, timeout=30, message="the batch never reached its second b")
    pid, attempt = (int(x) for x in markers[1].read_text().split())
    assert attempt == 1
    os.kill(pid, signal.SIGKILL)
    release[1].write_text("go")
    done = [finished(workflow_id, timeout=120) for workflow_id in workflows]
    assert [wf.status for wf in done] == [S.COMPLETED] * 3
    for wf in done:
        a = stored_nodes.get(workflow_id=wf.id, name__endswith="a_executor_task")
        b = stored_nodes.get(workflow_id=wf.id, name__endswith="b_executor_task")
        # `a` was committed before the kill: never run again. Every `b` had been claimed by the
        # killed batch and none applied: each ran again, and only its second run was applied.
        assert (a.attempts, b.attempts) == (1, 2)
        assert wf.runtime_parameters["trace"] == ["a_executor_task"]
        assert wf.runtime_parameters["attempts_seen"] == [2]
