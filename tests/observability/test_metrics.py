"""Prometheus metrics: counted after commit, read by staff or the token, backlog gauges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction

from dagger_django.engine import services
from dagger_django.models import Workflow

from ..engine import builders as b
from ..engine import tasks as t
from ..helpers import sample, scrape

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_completed_workflow_counts_start_completion_transitions_and_durations(
    engine: Any, counted: Callable[..., float]
) -> None:
    dispatcher, clock = engine
    tmpl = b.linear("ObsCompleted", (t.Record, "a"), (t.Record, "b"))
    before = counted("dagger_node_transitions_total", kind="executor", status="COMPLETED")
    wf = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    assert services.workflow_get(workflow_id=wf.id).status == "COMPLETED"
    assert counted("dagger_workflows_started_total", template="ObsCompleted") == 1
    assert counted("dagger_workflows_completed_total", template="ObsCompleted") == 1
    assert counted("dagger_workflows_failed_total", template="ObsCompleted") == 0
    assert counted("dagger_node_transitions_total", kind="executor", status="COMPLETED") == before + 2
    assert counted("dagger_node_duration_seconds_count", template="ObsCompleted", kind="executor") == 2
    assert counted("dagger_workflow_duration_seconds_count", template="ObsCompleted", status="COMPLETED") == 1


def test_a_rolled_back_transaction_counts_nothing(engine: Any, counted: Callable[..., float]) -> None:
    tmpl = b.linear("ObsRolledBack", (t.Record, "a"))
    with pytest.raises(RuntimeError), transaction.atomic():
        tmpl.create_instance(submit_task=True)
        raise RuntimeError("the request failed after starting the workflow")
    assert counted("dagger_workflows_started_total", template="ObsRolledBack") == 0
    assert not Workflow.objects.filter(template_name="ObsRolledBack").exists()


def test_a_failing_task_counts_its_retries_then_the_failed_workflow(
    engine: Any, counted: Callable[..., float]
) -> None:
    dispatcher, clock = engine
    tmpl = b.linear("ObsFlaky", (t.Flaky, "flaky"))
    wf = tmpl.create_instance(submit_task=True, fail_times=5)
    dispatcher.drain()
    for _ in range(2):  # two retries, 10 s then 20 s later
        clock.advance(seconds=30)
        dispatcher.drain()
    assert services.workflow_get(workflow_id=wf.id).status == "FAILURE"
    assert counted("dagger_node_retries_total", template="ObsFlaky", kind="executor") == 2
    assert counted("dagger_workflows_failed_total", template="ObsFlaky") == 1
    assert counted("dagger_node_transitions_total", kind="executor", status="FAILURE") >= 1


# -- the endpoint ----------------------------------------------------------------------------------
def test_the_endpoint_refuses_anonymous_users(client: Any) -> None:
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_the_endpoint_refuses_signed_in_users_who_are_not_staff(client: Any, django_user_model: Any) -> None:
    user = django_user_model.objects.create_user(username="viewer", password="pw")
    client.force_login(user)
    assert client.get("/metrics").status_code == 403


def test_the_endpoint_refuses_a_wrong_token_and_a_token_when_none_is_set(client: Any, settings: Any) -> None:
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 401
    settings.DAGGER = {**settings.DAGGER, "METRICS_TOKEN": "the-scraper-token"}
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer not-the-token").status_code == 401


def test_the_endpoint_accepts_the_token(client: Any, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "METRICS_TOKEN": "the-scraper-token"}
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer the-scraper-token")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"dagger_workflows_running" in response.content


def test_the_endpoint_serves_staff_users_the_event_counters(engine: Any, admin_client: Any) -> None:
    dispatcher, _ = engine
    b.linear("ObsScraped", (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.drain()
    families = scrape(admin_client)
    assert sample(families, "dagger_workflows_completed_total", template="ObsScraped") == 1


def test_the_backlog_gauges_count_running_stuck_workflows_and_due_late_timers(
    engine: Any, admin_client: Any, settings: Any
) -> None:
    dispatcher, clock = engine
    settings.DAGGER = {**settings.DAGGER, "METRICS_STUCK_SECONDS": 20, "METRICS_LATE_TIMER_SECONDS": 5}
    tmpl = b.linear("ObsBacklog", (t.Flaky, "flaky"))
    tmpl.create_instance(submit_task=True, fail_times=1)
    dispatcher.drain(fire_due_timers=False)  # the first attempt fails: a retry timer in 10 s
    families = scrape(admin_client)
    assert sample(families, "dagger_workflows_running") == 1
    assert sample(families, "dagger_workflows_stuck") == 0
    assert sample(families, "dagger_timers_due") == 0
    clock.advance(seconds=30)  # the timer is 20 s overdue; the workflow has run for 30 s
    families = scrape(admin_client)
    assert sample(families, "dagger_workflows_stuck") == 1
    assert sample(families, "dagger_timers_due") == 1
    assert sample(families, "dagger_timers_late") == 1
    assert sample(families, "dagger_timer_oldest_due_age_seconds") == pytest.approx(20, abs=1)
    assert sample(families, "dagger_outbox_backlog") == 0
    dispatcher.drain()
    families = scrape(admin_client)
    assert sample(families, "dagger_workflows_running") == 0
    assert sample(families, "dagger_timers_due") == 0


def test_a_backlog_count_stops_at_the_limit(engine: Any, admin_client: Any, settings: Any) -> None:
    dispatcher, _ = engine
    settings.DAGGER = {**settings.DAGGER, "METRICS_COUNT_LIMIT": 2}
    tmpl = b.linear("ObsLimit", (t.Flaky, "flaky"))
    for _ in range(3):
        tmpl.create_instance(submit_task=True, fail_times=1)
    dispatcher.drain(fire_due_timers=False)
    families = scrape(admin_client)
    assert sample(families, "dagger_workflows_running") == 2
    assert sample(families, "dagger_backlog_count_limit") == 2


# -- system checks ---------------------------------------------------------------------------------
def test_metrics_settings_out_of_range_are_check_errors(settings: Any) -> None:
    from dagger_django.checks import check_observability_settings

    settings.DAGGER = {
        **settings.DAGGER,
        "METRICS_COUNT_LIMIT": 0,
        "METRICS_STUCK_SECONDS": 0,
        "METRICS_LATE_TIMER_SECONDS": -1,
    }
    assert [p.id for p in check_observability_settings()] == ["dagger_django.E060"] * 3


def test_a_multiprocess_dir_that_is_not_a_directory_is_a_check_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from dagger_django.checks import check_observability_settings

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    assert [p.id for p in check_observability_settings()] == ["dagger_django.E061"]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert check_observability_settings() == []
