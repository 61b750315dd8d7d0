"""End to end, time: a real worker, a real celery beat, PostgreSQL and Redis.

Triggers, interval polls, monitors and process deadlines fire through the beat entry's sweep and
the Celery countdowns; a worker killed with SIGKILL (all its processes) is recovered by the next
worker's start-up sweep. Every wait is a poll with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    IntervalTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TriggerTaskTemplateBuilder,
)
from dagger_django.beat import beat_setup
from dagger_django.models import Status, Timer, TimerStatus, Workflow
from tests.helpers import stored_nodes

from ..conftest import (
    ROOT,
    WORKER_TEST_MODULES,
    WorkerProcess,
    _database_url,
    _queue_delete,
    _queue_purge,
    _require_real_services,
    _stop,
    _wait_until_ready,
)
from ..helpers import history, wait_for
from . import time_workflows as tw
from . import workflows as w

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
S = Status
helper = DAGBuilderHelper(dagger_app=Dagger.app)
#: Seconds between sweeps in these tests (beat's smallest step).
SWEEP_EVERY = 1


# -- processes ------------------------------------------------------------------------------------------
def _env(database_url: str, queue: str, **extra: str) -> dict[str, str]:
    from django.conf import settings

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE") or "config.settings",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_QUEUE": queue,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


@pytest.fixture
def fast_sweeps(settings: Any, transactional_db: None) -> None:
    """This process and the beat entries use a one-second sweep interval."""
    settings.DAGGER = {**getattr(settings, "DAGGER", {}), "TRIGGER_INTERVAL": SWEEP_EVERY}
    beat_setup()


@pytest.fixture
def beat(celery_worker_process: WorkerProcess, fast_sweeps: None, tmp_path: Path) -> Iterator[Path]:
    """``celery -A config beat`` with the database scheduler, sending to the test worker's queue."""
    log_path = tmp_path / "beat.log"
    env = _env(
        celery_worker_process.database_url,
        celery_worker_process.queue,
        DAGGER_TRIGGER_INTERVAL=str(SWEEP_EVERY),
    )
    argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "info", "--max-interval", "1"]
    argv += ["-s", str(tmp_path / "beat-schedule")]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: (
                "Sending due task dagger_django: timer sweep" in log_path.read_text(errors="replace")
                or proc.poll() is not None
            ),
            timeout=30,
            message=lambda: f"beat to send its first sweep; log:\n{log_path.read_text(errors='replace')}",
        )
        assert proc.poll() is None, log_path.read_text(errors="replace")
        yield log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def finished(workflow_id: Any, timeout: float = 40) -> Workflow:
    terminal = {S.COMPLETED, S.FAILURE, S.STOPPED, S.SKIPPED}
    wait_for(
        lambda: Workflow.objects.filter(pk=workflow_id, status__in=terminal).exists(),
        timeout=timeout,
        message=lambda: (
            f"workflow {workflow_id} to finish; nodes: "
            + str({n.name: n.status for n in stored_nodes.filter(workflow_id=workflow_id)})
        ),
    )
    return Workflow.objects.get(pk=workflow_id)


def one_process(name: str, *builders: Any, max_run_duration: int = 0) -> Any:
    root = helper.build_and_link_tasks(list(builders))
    process = helper.generic_process_builder(
        process_name="main", root_task=root, max_run_duration=max_run_duration
    )
    return helper.generic_template(template_name=name, root_process=process.build())


def trigger(name: str, key: str = "run_at") -> Any:
    return (
        TriggerTaskTemplateBuilder(Dagger.app)
        .set_type(tw.Stamp)
        .set_name(name)
        .set_time_to_execute_lookup_key(key)
    )


def step(name: str, cls: type = tw.Step) -> Any:
    return helper.generic_executor_task_builder(task_type=cls, name=name)


# -- the tests ------------------------------------------------------------------------------------------
def test_trigger_is_fired_by_the_beat_sweep(beat: Path) -> None:
    tmpl = one_process("E2ETimeTrigger", trigger("remind"), step("after"))
    run_at = time.time() + 4  # beyond 2 sweep intervals: no countdown at creation, only the sweeps
    wf = tmpl.create_instance(submit_task=True, run_at=run_at)
    (timer,) = Timer.objects.filter(workflow_id=wf.id)
    wf = finished(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["remind", "after_executor_task"]
    assert wf.runtime_parameters["remind_at"] >= run_at
    assert Timer.objects.get(pk=timer.pk).status == TimerStatus.FIRED
    (fired,) = history(wf.id, "trigger_due")
    assert 0 <= (fired.created_at.timestamp() - run_at) < 3 * SWEEP_EVERY


def test_interval_polls_until_ready_and_completes_at_its_deadline(beat: Path, tmp_path: Path) -> None:
    def poll(name: str) -> Any:
        builder = IntervalTaskTemplateBuilder(Dagger.app).set_type(tw.PollFile).set_name(name)
        builder.set_time_to_force_complete_lookup_key("deadline").set_interval_execute_period_lookup_key(
            "period"
        )
        return builder

    ready_file = tmp_path / "ready"
    ready = one_process("E2EIntervalReady", poll("poll"), step("after"))
    late = one_process("E2EIntervalDeadline", poll("poll"))
    deadline = time.time() + 4
    waits = ready.create_instance(
        submit_task=True, period=0.5, deadline=time.time() + 120, ready_file=str(ready_file)
    )
    gives_up = late.create_instance(submit_task=True, period=1, deadline=deadline)

    wait_for(
        lambda: Workflow.objects.get(pk=waits.id).runtime_parameters.get("polls", 0) >= 2,
        timeout=30,
        message="two polls of the interval task",
    )
    ready_file.write_text("go")
    done = finished(waits.id)
    assert done.status == S.COMPLETED
    assert done.runtime_parameters["trace"] == ["after_executor_task"]

    gave_up = finished(gives_up.id)
    assert gave_up.status == S.COMPLETED  # the original hung here
    assert gave_up.runtime_parameters["executed_at"] >= deadline
    assert gave_up.runtime_parameters["polls"] >= 2


def test_monitor_calls_back_while_the_process_runs_late(beat: Path, tmp_path: Path) -> None:
    process = (
        ProcessTemplateDagBuilder(Dagger.app)
        .set_name("watched")
        .set_type(tw.Watched)
        .set_root_task(helper.build_and_link_tasks([step("blocks", w.Blocks)]))
    )
    tmpl = helper.generic_template(template_name="E2EMonitor", root_process=process.build())
    marker, release, monitor_marker = tmp_path / "marker", tmp_path / "release", tmp_path / "monitor"
    wf = tmpl.create_instance(
        submit_task=True,
        complete_by_time=time.time() + 2,
        marker=str(marker),
        release=str(release),
        monitor_marker=str(monitor_marker),
    )
    wait_for(monitor_marker.exists, timeout=30, message="the monitor's hook to run")
    assert stored_nodes.get(workflow_id=wf.id, name__endswith="blocks_executor_task").status == S.EXECUTING
    release.write_text("go")
    wf = finished(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["monitor_calls"] == [["watched", "EXECUTING"]]
    assert stored_nodes.get(workflow_id=wf.id, kind="monitor").status == S.COMPLETED


def test_process_deadline_skips_its_waiting_tasks_and_the_next_process_runs(beat: Path) -> None:
    slow = helper.generic_process_builder(
        process_name="slow",
        root_task=helper.build_and_link_tasks([trigger("later"), step("never")]),
        max_run_duration=2,
    )
    after = helper.generic_process_builder(process_name="after", root_task=step("after").build())
    tmpl = helper.generic_template(
        template_name="E2EDeadline", root_process=helper.build_and_link_processes([slow, after])
    )
    wf = tmpl.create_instance(submit_task=True, run_at=time.time() + 3600)
    wf = finished(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["after_executor_task"]
    statuses = {n.name.rsplit(".", 1)[-1]: n.status for n in stored_nodes.filter(workflow_id=wf.id)}
    assert statuses["slow"] == statuses["later"] == statuses["never_executor_task"] == S.SKIPPED
    assert not Timer.objects.filter(workflow_id=wf.id, status=TimerStatus.PENDING).exists()


# -- recovery after SIGKILL of a whole worker -----------------------------------------------------------
def start_worker(database_url: str, queue: str, log_path: Path, **env: str) -> WorkerProcess:
    from config.celery import app

    nodename = f"{queue}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-l", "info", "--pool=prefork",
        "--concurrency=1", "-Q", queue, "-n", nodename, "--include", ",".join(WORKER_TEST_MODULES),
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=_env(database_url, queue, **env), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    worker = WorkerProcess(
        proc=proc, queue=queue, nodename=nodename, log_path=log_path, database_url=database_url
    )
    _wait_until_ready(app, worker)
    return worker


def test_worker_killed_mid_task_is_recovered_by_the_next_worker(
    django_db_setup: None, tmp_path: Path
) -> None:
    from django.conf import settings
    from django.db import connection

    from config.celery import app

    _require_real_services(connection.vendor, settings.CELERY_BROKER_URL)
    lease = 3
    queue = f"dagger-recovery-{uuid.uuid4().hex[:12]}"
    database_url = _database_url(connection.settings_dict)
    log_path = tmp_path / "workers.log"
    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    _queue_purge(app, queue)
    workers: list[WorkerProcess] = []
    try:
        workers.append(start_worker(database_url, queue, log_path, DAGGER_LEASE_SECONDS=str(lease)))
        tmpl = one_process("E2ESigkill", step("blocks", w.Blocks), step("after"))
        marker, release = tmp_path / "marker", tmp_path / "release"
        wf = tmpl.create_instance(submit_task=True, marker=str(marker), release=str(release))
        wait_for(marker.exists, timeout=30, message="the blocking task to start")
        assert marker.read_text().split()[1] == "1"
        os.killpg(workers[0].proc.pid, signal.SIGKILL)  # the whole worker: main process and pool
        workers[0].proc.wait(timeout=10)
        marker.unlink()
        blocked = stored_nodes.get(workflow_id=wf.id, name__endswith="blocks_executor_task")
        assert blocked.status == S.EXECUTING
        wait_for(
            lambda: time.time() - stored_nodes.get(pk=blocked.pk).updated_at.timestamp() > lease + 0.5,
            timeout=30,
            message="the dead worker's lease to expire",
        )
        # RESTART_TASKS_ON_BOOT: the new worker's start-up sweep hands the node out again.
        workers.append(start_worker(database_url, queue, log_path, DAGGER_LEASE_SECONDS=str(lease)))
        wait_for(
            marker.exists,
            timeout=30,
            message=lambda: f"the task to run again; log:\n{workers[-1].log_tail()}",
        )
        assert marker.read_text().split()[1] == "2"
        release.write_text("go")
        wf = finished(wf.id)
        assert wf.status == S.COMPLETED
        assert wf.runtime_parameters["attempts_seen"] == [2]
        assert wf.runtime_parameters["trace"] == ["after_executor_task"]
        assert len(history(wf.id, "recovered")) == 1
    finally:
        app.conf.task_default_queue = previous_queue
        for worker in workers:
            _stop(worker)
        _queue_delete(app, queue)
