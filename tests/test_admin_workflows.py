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
    assert ">wait_for_payment_listener_task</span>" in by_id[running.id] and "2 h 5 min" in by_id[running.id]
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
    # The page's current steps come from one query over its workflows' nodes, not one per row.
    node_reads = [q["sql"] for q in many.captured_queries if '"dagger_django_workflow"."nodes"' in q["sql"]]
    assert len(node_reads) == 1
    assert "_facets" not in html  # no facet counts offered
    # No full count of the table beside the filtered one (show_full_result_count = False).
    assert sum("COUNT(*)" in q["sql"] for q in many.captured_queries) <= 1


def test_list_counts_at_most_the_count_limit_and_pages_on_past_it(
    staff: Client, dispatcher: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagger_django.admin import WorkflowAdmin

    settings.DAGGER = {**getattr(settings, "DAGGER", {}), "LIST_COUNT_LIMIT": 2}
    monkeypatch.setattr(WorkflowAdmin, "list_per_page", 2)
    tmpl = waiting("AdminCountLimit")
    ids = [str(tmpl.create_instance(submit_task=True).id) for _ in range(5)]
    newest_first = [
        str(pk) for pk in Workflow.objects.order_by("-time_created", "-id").values_list("id", flat=True)
    ]
    assert sorted(newest_first) == sorted(ids)

    first = staff.get(LIST).content.decode()
    # Three rows read, not five: a lower bound, and a link to the page past it.
    assert "more than 2 workflows" in first
    assert [pk for pk in newest_first if pk in first] == newest_first[:2]
    assert '?p=2"' in first
    second = staff.get(LIST, {"p": "2"}).content.decode()
    assert "more than 4 workflows" in second and '?p=3"' in second
    assert [pk for pk in newest_first if pk in second] == newest_first[2:4]
    third = staff.get(LIST, {"p": "3"}).content.decode()
    assert "5 workflows" in third and "more than" not in third  # the end: counted exactly
    assert [pk for pk in newest_first if pk in third] == newest_first[4:]
    filtered = staff.get(LIST, {"status__exact": S.STOPPED}).content.decode()
    assert "0 workflows" in filtered


# -- the workflow page: stop and retry buttons, the timeline, delete and save -----------------------
def page(wf_id: Any, operation: str = "change") -> str:
    return f"{LIST}{wf_id}/{operation}/"


def workflow_event(wf_id: Any, reason: str) -> Any:
    from dagger_django.engine import selectors

    return next(
        e for e in selectors.workflow_events(workflow_id=wf_id) if e.node_id is None and e.reason == reason
    )


def test_stop_button_confirms_then_stops_and_records_who_and_why(staff: Client, dispatcher: Any) -> None:
    wf = waiting().create_instance(submit_task=True)
    dispatcher.drain()
    html = staff.get(page(wf.id)).content.decode()
    assert f'href="{page(wf.id, "stop")}"' in html and 'id="dagger-retry"' not in html

    confirm = staff.get(page(wf.id, "stop"))
    assert confirm.status_code == 200 and Workflow.objects.get(pk=wf.id).status == S.EXECUTING
    assert (
        'name="csrfmiddlewaretoken"' in confirm.content.decode()
        and 'name="reason"' in confirm.content.decode()
    )

    response = staff.post(page(wf.id, "stop"), {"reason": "customer cancelled"}, follow=True)
    assert response.redirect_chain[-1][0] == page(wf.id)
    assert Workflow.objects.get(pk=wf.id).status == S.STOPPED
    assert f"Stopped workflow {wf.id} (customer cancelled)." in response.content.decode()
    assert workflow_event(wf.id, "stopped").detail == {"actor": "boss", "reason": "customer cancelled"}
    history = response.content.decode().split('id="dagger-events"')[1]
    assert "&quot;actor&quot;: &quot;boss&quot;" in history and "customer cancelled" in history
    assert 'id="dagger-stop"' not in response.content.decode()  # nothing left to stop

    again = staff.post(page(wf.id, "stop"), {"reason": ""}, follow=True)
    assert "Stop refused:" in again.content.decode() and "cannot be stopped" in again.content.decode()


def test_retry_button_retries_a_failed_workflow_and_records_the_user(staff: Client, dispatcher: Any) -> None:
    from dagger_django.engine import services

    wf = b.linear("AdminPageRetry", (t.Boom, "boom")).create_instance(submit_task=True)
    dispatcher.drain()
    html = staff.get(page(wf.id)).content.decode()
    assert 'id="dagger-retry"' in html and 'id="dagger-stop"' in html
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    response = staff.post(page(wf.id, "retry"), follow=True)
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == S.COMPLETED
    assert f"Retried workflow {wf.id}." in response.content.decode()
    assert workflow_event(wf.id, "retried").detail == {"actor": "boss"}


def test_the_buttons_need_a_csrf_token(django_user_model: Any, dispatcher: Any) -> None:
    wf = waiting().create_instance(submit_task=True)
    dispatcher.drain()
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_superuser("csrf", "c@example.com", "pw"))
    assert client.post(page(wf.id, "stop"), {"reason": "x"}).status_code == 403
    assert Workflow.objects.get(pk=wf.id).status == S.EXECUTING


@pytest.mark.parametrize(
    "role", ["anonymous", "staff_without_permissions", "read_only_staff", "operator_staff"]
)
def test_the_buttons_honour_the_operate_permission(
    django_user_model: Any, dispatcher: Any, role: str
) -> None:
    from .test_admin import admin_client

    wf = waiting().create_instance(submit_task=True)
    dispatcher.drain()
    client = admin_client(django_user_model, role)
    shown = client.get(page(wf.id))
    confirm = client.get(page(wf.id, "stop"))
    done = client.post(page(wf.id, "stop"), {"reason": "r"})

    operator = role == "operator_staff"
    assert (Workflow.objects.get(pk=wf.id).status == S.STOPPED) is operator
    if role != "anonymous":
        assert (confirm.status_code == 200) is operator and (done.status_code == 302) is operator
    if role == "read_only_staff":
        assert shown.status_code == 200 and 'id="dagger-stop"' not in shown.content.decode()
        assert confirm.status_code == 403 and done.status_code == 403
    if role == "anonymous":
        assert "/admin/login/" in confirm["Location"] and "/admin/login/" in done["Location"]
        return


def test_operating_an_unknown_workflow_goes_back_to_the_list(staff: Client, dispatcher: Any) -> None:
    response = staff.post(page("0b1e4e3e-0000-4000-8000-000000000000", "stop"), follow=True)
    assert response.status_code == 200 and response.redirect_chain[-1][0].startswith("/admin/")


def test_timeline_has_millisecond_times_gaps_and_whole_pretty_detail(staff: Client, dispatcher: Any) -> None:
    import html as htmllib
    import re

    wf = b.linear("AdminTimeline", (t.Record, "a"), (t.Boom, "boom")).create_instance(
        submit_task=True, order={"id": "o-1", "lines": [1, 2]}
    )
    dispatcher.drain()
    html = staff.get(page(wf.id)).content.decode()
    history = html.split('id="dagger-events"')[1]
    times = re.findall(r'<td class="time">(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})</td>', history)
    assert len(times) == history.count("data-event-reason=")
    assert re.search(r'<td class="time">\+\d+ ms</td>', history)
    details = [
        htmllib.unescape(d) for d in re.findall(r'<pre class="dagger-json">(.*?)</pre>', history, re.S)
    ]
    failure = next(d for d in details if "Traceback" in d)
    # JSON, indented, with the traceback's lines broken (no literal \n) and whole (its last line).
    assert "\\n" not in failure and '"traceback": "Traceback (most recent call last):\n  File ' in failure
    assert "RuntimeError: boom\n" in failure
    assert len(failure) > 300

    parameters = htmllib.unescape(html.split('id="dagger-parameters"')[1].split('id="dagger-events"')[0])
    assert '{\n  "id": "o-1",\n  "lines": [\n    1,' in parameters  # runtime parameters, indented


def test_no_save_buttons_and_delete_only_once_ended(staff: Client, dispatcher: Any) -> None:
    running = waiting().create_instance(submit_task=True)
    done = b.linear("AdminDelete", (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.drain()
    html = staff.get(page(running.id)).content.decode()
    assert "<h1>View workflow</h1>" in html
    assert 'name="_save"' not in html and 'name="_continue"' not in html and 'name="_addanother"' not in html
    assert page(running.id, "delete") not in html
    assert staff.get(page(running.id, "delete")).status_code == 403
    assert page(done.id, "delete") in staff.get(page(done.id)).content.decode()

    both = {"action": "delete_selected", "_selected_action": [str(running.id), str(done.id)]}
    confirm = staff.post(LIST, both).content.decode()
    assert "delete the following" not in confirm.lower() or "permission" in confirm.lower()
    assert 'name="post"' not in confirm  # no way to confirm while a running one is selected
    assert staff.post(LIST, {**both, "post": "yes"}).status_code == 403
    assert Workflow.objects.filter(pk__in=[running.id, done.id]).count() == 2
    staff.post(LIST, {"action": "delete_selected", "_selected_action": [str(done.id)], "post": "yes"})
    assert list(Workflow.objects.filter(pk__in=[running.id, done.id]).values_list("id", flat=True)) == [
        running.id
    ]


def test_engine_records_the_actor_and_reason_and_stays_compatible(dispatcher: Any) -> None:
    from dagger_django.engine import services

    first, second = (waiting().create_instance(submit_task=True) for _ in range(2))
    dispatcher.drain()
    services.workflow_stop(workflow_id=first.id)
    services.workflow_stop(workflow_id=second.id, actor="ops", reason="  duplicate order ")
    assert workflow_event(first.id, "stopped").detail == {}
    assert workflow_event(second.id, "stopped").detail == {"actor": "ops", "reason": "duplicate order"}


def test_pretty_json_breaks_lines_only_where_a_string_has_a_newline() -> None:
    from dagger_django.admin import pretty_json

    assert (
        pretty_json({"tb": "a\nb", "path": "C:\\new", "n": 1})
        == '{\n  "n": 1,\n  "path": "C:\\\\new",\n  "tb": "a\nb"\n}'
    )


def test_the_list_actions_record_the_user_too(staff: Client, dispatcher: Any) -> None:
    wf = waiting().create_instance(submit_task=True)
    dispatcher.drain()
    staff.post(LIST, {"action": "stop_workflows", "_selected_action": [str(wf.id)]})
    assert workflow_event(wf.id, "stopped").detail == {"actor": "boss"}


def test_history_button_shows_the_workflows_own_history(
    staff: Client, dispatcher: Any, django_user_model: Any
) -> None:
    from dagger_django.engine import selectors

    from .test_admin import admin_client

    wf = waiting().create_instance(submit_task=True)
    dispatcher.drain()
    staff.post(page(wf.id, "stop"), {"reason": "wrong address"})
    response = staff.get(page(wf.id, "history"))
    html = response.content.decode()
    assert response.status_code == 200 and 'id="dagger-history"' in html
    assert html.count("data-event-reason=") == len(selectors.workflow_events(workflow_id=wf.id)) > 3
    stopped = html[html.index('data-event-reason="stopped"') :]
    assert '<td class="actor">boss</td>' in stopped and "wrong address" in stopped
    assert "doesn’t have a change history" not in html

    for role, status in (("read_only_staff", 200), ("staff_without_permissions", 403)):
        assert admin_client(django_user_model, role).get(page(wf.id, "history")).status_code == status
    assert staff.get(page("0b1e4e3e-0000-4000-8000-000000000000", "history")).status_code == 302
