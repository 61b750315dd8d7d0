"""The admin's workflow pages: the list (current steps, badges, errors, age and duration, the
age, version and stuck filters, a constant number of queries per page)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from dagger_django.admin import human_duration
from dagger_django.models import HistoryRecord, Status, Workflow, WorkflowTemplate
from dagger_django.testing import InMemoryDispatcher, engine_under_test

from .engine import builders as b
from .engine import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)
S = Status
LIST = "/admin/dagger_django/workflow/"


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (dispatcher, _clock):
        yield dispatcher


@pytest.fixture
def staff(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(user)
    return client


def waiting(name: str = "AdminWaiting") -> Any:
    return b.template(name, b.process("main", b.listener("wait_for_payment")))


def age(wf_id: Any, *, minutes: float) -> None:
    """Make a workflow look as if nothing happened to it for ``minutes`` (row and history)."""
    then = timezone.now() - dt.timedelta(minutes=minutes)
    Workflow.objects.filter(pk=wf_id).update(time_created=then, time_submitted=then, updated_at=then)
    HistoryRecord.objects.filter(workflow_id=wf_id).update(created_at=then)


def rows(html: str) -> list[str]:
    body = html[html.index('id="result_list"') :]
    return body.split("<tr")[2:]


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0, "0 s"),
        (45, "45 s"),
        (180, "3 min"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
        (86_400 + 4 * 3600, "1 d 4 h"),
    ],
)
def test_durations_read_as_a_person_says_them(seconds: int, said: str) -> None:
    assert human_duration(dt.timedelta(seconds=seconds)) == said


def test_list_shows_current_step_badge_error_age_and_duration(staff: Client, dispatcher: Any) -> None:
    running = waiting().create_instance(submit_task=True)
    failed = b.linear("AdminListBoom", (t.Boom, "boom")).create_instance(submit_task=True)
    done = b.linear("AdminListDone", (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.drain()
    age(running.id, minutes=125)

    html = staff.get(LIST).content.decode()
    by_id = {wf.id: next(row for row in rows(html) if str(wf.id) in row) for wf in (running, failed, done)}
    assert "wait_for_payment" in by_id[running.id] and "2 h 5 min" in by_id[running.id]
    assert 'class="dagger-badge" data-status="EXECUTING"' in by_id[running.id]
    assert 'data-status="FAILURE"' in by_id[failed.id] and "boom" in by_id[failed.id]
    assert "Traceback" not in by_id[failed.id]  # the first line only
    assert 'data-status="COMPLETED"' in by_id[done.id] and "wait_for_payment" not in by_id[done.id]


def test_stuck_filter_shows_executing_workflows_unchanged_for_the_threshold(
    staff: Client, dispatcher: Any
) -> None:
    stuck = waiting().create_instance(submit_task=True)
    fresh = waiting().create_instance(submit_task=True)
    ended_long_ago = b.linear("AdminStuckDone", (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.drain()
    age(stuck.id, minutes=90)
    age(ended_long_ago.id, minutes=90)

    html = staff.get(LIST, {"stuck": "1h"}).content.decode()
    assert str(stuck.id) in html and str(fresh.id) not in html and str(ended_long_ago.id) not in html
    html = staff.get(LIST, {"stuck": "1d"}).content.decode()
    assert str(stuck.id) not in html
    html = staff.get(LIST, {"stuck": "5m"}).content.decode()
    assert str(stuck.id) in html and str(fresh.id) not in html
    assert "5 min" in html and "1 day" in html  # the choices


def test_age_and_version_filters(staff: Client, dispatcher: Any) -> None:
    old = waiting().create_instance(submit_task=True)
    new = waiting().create_instance(submit_task=True)
    dispatcher.drain()
    age(old.id, minutes=2 * 24 * 60)
    html = staff.get(LIST, {"created": "1h"}).content.decode()
    assert str(new.id) in html and str(old.id) not in html
    html = staff.get(LIST, {"created": "1w"}).content.decode()
    assert str(new.id) in html and str(old.id) in html

    version = Workflow.objects.get(pk=new.id).template.version
    other = WorkflowTemplate.objects.exclude(version=version).values_list("version", flat=True).first()
    html = staff.get(LIST, {"template_version": str(version)}).content.decode()
    assert str(new.id) in html and f"v{version}" in html
    if other is not None:
        assert str(new.id) not in staff.get(LIST, {"template_version": str(other)}).content.decode()
    assert staff.get(LIST, {"template_version": "x"}).status_code == 200


def test_list_page_reads_in_a_constant_number_of_queries(
    staff: Client, dispatcher: Any, django_assert_max_num_queries: Any
) -> None:
    tmpl = waiting("AdminListQueries")
    for _ in range(3):
        tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    with django_assert_max_num_queries(12) as few:
        staff.get(LIST)
    for _ in range(97):
        tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    with django_assert_max_num_queries(len(few.captured_queries)) as many:
        html = staff.get(LIST).content.decode()
    assert html.count("wait_for_payment") >= 100
    assert len(many.captured_queries) == len(few.captured_queries)
    # The page's current steps come from one query over its nodes, not one per row.
    node_reads = [q["sql"] for q in many.captured_queries if '"dagger_django_node"' in q["sql"]]
    assert len(node_reads) == 1
    # No full count of the table beside the filtered one (show_full_result_count = False).
    assert sum("COUNT(*)" in q["sql"] for q in many.captured_queries) <= 1
