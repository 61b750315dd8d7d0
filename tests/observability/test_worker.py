"""A real worker: its metrics reach the endpoint (multiprocess mode) and its spans continue the
trace of the request that started the workflow (the context crossed Celery in the headers)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from dagger_django import DAGBuilderHelper, Dagger
from dagger_django.models import Status, Workflow
from dagger_django.observability import tracing

from ..e2e import workflows as w
from ..helpers import sample, scrape, wait_for
from ..kafka.broker import free_port
from ..tracing import hex_id, read_spans

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
helper = DAGBuilderHelper(dagger_app=Dagger.app)
ROOT = Path(__file__).resolve().parents[2]


def two_steps(name: str) -> Any:
    steps = [helper.generic_executor_task_builder(task_type=w.Step, name=n) for n in ("a", "b")]
    return helper.generic_template(
        template_name=name,
        root_process=helper.generic_process_builder(
            process_name="main", root_task=helper.build_and_link_tasks(steps)
        ).build(),
    )


def completed(workflow_id: Any) -> None:
    wait_for(
        lambda: Workflow.objects.filter(pk=workflow_id, status=Status.COMPLETED).exists(),
        timeout=30,
        message=f"workflow {workflow_id} did not complete",
    )


def test_a_workflow_run_by_the_worker_shows_in_the_metrics(
    celery_worker_process: Any, admin_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = two_steps("ObsWorkerMetrics").create_instance(submit_task=True)
    completed(wf.id)
    # This process scrapes the files the worker's pool processes count into.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(celery_worker_process.metrics_dir))
    families = wait_for(
        lambda: (
            (f := scrape(admin_client))
            and sample(f, "dagger_workflows_completed_total", template="ObsWorkerMetrics") == 1
            and f
        ),
        timeout=10,
        message="the worker's completion did not reach the metrics",
    )
    assert (
        sample(families, "dagger_node_duration_seconds_count", template="ObsWorkerMetrics", kind="executor")
        == 2
    )
    assert sample(families, "dagger_workflows_running") == 0


def test_the_trace_of_a_request_continues_in_the_worker(celery_worker_process: Any, spans: Any) -> None:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /orders") as request:
        wf = two_steps("ObsWorkerTrace").create_instance(
            submit_task=True, partition_key_lookup="order_id", order_id="o-9000"
        )
    completed(wf.id)
    trace_id = hex_id(request.get_span_context().trace_id, 32)
    parent_id = hex_id(request.get_span_context().span_id, 16)

    def worker_span() -> dict[str, Any] | None:
        return next(
            (
                s
                for s in read_spans(celery_worker_process.trace_file)
                if s["name"] == "dagger_django.run_node"
                and s["attributes"].get(tracing.WORKFLOW_ID) == str(wf.id)
            ),
            None,
        )

    span = wait_for(worker_span, timeout=10, message="the worker exported no span of the workflow")
    assert span["context"]["trace_id"] == trace_id
    assert span["parent_id"] == parent_id
    assert span["attributes"][tracing.BUSINESS_KEY] == "o-9000"
    assert span["attributes"][tracing.TEMPLATE] == "ObsWorkerTrace"
    assert span["attributes"][tracing.NODE_NAME].endswith("a_executor_task")


def test_the_metrics_command_serves_what_the_worker_counted(
    celery_worker_process: Any, tmp_path: Any
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    wf = two_steps("ObsMetricsCommand").create_instance(submit_task=True)
    completed(wf.id)
    port = free_port()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(celery_worker_process.metrics_dir),
        "DATABASE_URL": celery_worker_process.database_url,
    }
    with open(tmp_path / "dagger_metrics.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "dagger_metrics", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def scraped() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        return {f.name: f for f in text_string_to_metric_families(text)}

    try:
        families = wait_for(
            lambda: (
                (f := scraped())
                and sample(f, "dagger_workflows_completed_total", template="ObsMetricsCommand") == 1
                and f
            ),
            timeout=30,
            message=lambda: (
                "dagger_metrics served no count: " + (tmp_path / "dagger_metrics.log").read_text()
            ),
        )
        assert sample(families, "dagger_workflows_running") == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
