"""The admin moves a workflow on: Resume (button and bulk action), Skip and Complete on the
waiting or failed tasks of the node table, Edit runtime parameters, Fire now on timers, replay
recording the user; each confirmed with a reason, reported with ``message_user``, recorded in the
workflow's history, and each needing ``dagger_django.operate_workflow`` (tests per role)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from dagger_django import Dagger
from dagger_django.engine import messages, selectors, services
from dagger_django.models import (
    InboxMessage,
    InboxStatus,
    Node,
    Status,
    Timer,
    TimerStatus,
    Workflow,
)
from dagger_django.testing import InMemoryDispatcher, engine_under_test
from tests.helpers import stored_nodes

from .engine import builders as b
from .engine import tasks as t
from .test_admin import ADMIN_ROLES, admin_client, post_action

pytestmark = pytest.mark.django_db(transaction=True)
S = Status
LIST = "/admin/dagger_django/workflow/"
TEMPLATE = "AdminOperateWaiting"


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (dispatcher, _clock):
        yield dispatcher


@pytest.fixture
def staff(client: Client, django_user_model: Any) -> Client:
    client.force_login(django_user_model.objects.create_superuser("boss", "boss@example.com", "pw"))
    return client


@pytest.fixture
def waiting_template() -> Iterator[Any]:
    """main: a listener on "orders" keyed on order_id, then a task."""
    listener = b.helper.generic_listener_task_builder(topic="orders", task_type=t.Waiter, process_name="wait")
    tmpl = b.template(
        TEMPLATE, b.process("main", b.helper.build_and_link_tasks([listener, b.task(t.Record, "ship")]))
    )
    Dagger.template_dags[TEMPLATE] = tmpl
    yield tmpl
    Dagger.template_dags.pop(TEMPLATE, None)


def waiting(tmpl: Any, dispatcher: InMemoryDispatcher, order_id: str = "o-1") -> Any:
    wf = tmpl.create_instance(partition_key_lookup="order_id", submit_task=True, order_id=order_id)
    dispatcher.drain()
    return wf


def stopped(tmpl: Any, dispatcher: InMemoryDispatcher) -> Any:
    wf = waiting(tmpl, dispatcher)
    services.workflow_stop(workflow_id=wf.id)
    dispatcher.drain()  # its stop hook runs
    return wf


def page(wf_id: Any, operation: str = "change") -> str:
    return f"{LIST}{wf_id}/{operation}/"


def listener(wf_id: Any) -> Node:
    return stored_nodes.get(workflow_id=wf_id, kind="listener")


def node_url(wf_id: Any, node_id: Any, action: str) -> str:
    return reverse("admin:dagger_django_workflow_node_action", args=[wf_id, node_id, action])


def event(wf_id: Any, reason: str, *, workflow: bool = False) -> Any:
    found = [e for e in selectors.workflow_events(workflow_id=wf_id) if e.reason == reason]
    (one,) = [e for e in found if e.node_id is None] if workflow else found
    return one


def status(wf_id: Any) -> str:
    return Workflow.objects.get(pk=wf_id).status


# -- resume ---------------------------------------------------------------------------------------------
def test_resume_button_confirms_then_resumes_and_records_who_and_why(
    staff: Client, dispatcher: Any, waiting_template: Any
) -> None:
    running = waiting(waiting_template, dispatcher, "o-2")
    assert 'id="dagger-resume"' not in staff.get(page(running.id)).content.decode()
    wf = stopped(waiting_template, dispatcher)
    html = staff.get(page(wf.id)).content.decode()
    assert f'href="{page(wf.id, "resume")}"' in html

    confirm = staff.get(page(wf.id, "resume")).content.decode()
    assert 'name="reason"' in confirm and "continues where it stopped" in confirm
    assert status(wf.id) == S.STOPPED

    response = staff.post(page(wf.id, "resume"), {"reason": "customer paid after all"}, follow=True)
    assert response.redirect_chain[-1][0] == page(wf.id)
    assert f"Resumed workflow {wf.id} (customer paid after all)." in response.content.decode()
    assert status(wf.id) == S.EXECUTING and listener(wf.id).status == S.EXECUTING
    assert event(wf.id, "resumed", workflow=True).detail == {
        "actor": "boss",
        "reason": "customer paid after all",
    }

    again = staff.post(page(wf.id, "resume"), {"reason": ""}, follow=True)
    assert "Resume refused:" in again.content.decode() and "Only a STOPPED workflow" in again.content.decode()


@pytest.mark.parametrize("role", ADMIN_ROLES)
def test_resume_action_and_button_need_the_operate_permission(
    django_user_model: Any, dispatcher: Any, waiting_template: Any, role: str
) -> None:
    first, second = stopped(waiting_template, dispatcher), stopped(waiting_template, dispatcher)
    client = admin_client(django_user_model, role)
    listing = client.get(LIST)
    shown = client.get(page(first.id))
    confirm = client.get(page(first.id, "resume"))

    post_action(client, "workflow", "resume_workflows", [first.id])
    done = client.post(page(second.id, "resume"), {"reason": "r"})

    operator = role == "operator_staff"
    assert (status(first.id) == S.EXECUTING) is operator and (status(second.id) == S.EXECUTING) is operator
    assert ('value="resume_workflows"' in listing.content.decode()) is operator
    if operator:
        assert 'id="dagger-resume"' in shown.content.decode() and confirm.status_code == 200
        assert event(first.id, "resumed", workflow=True).detail == {"actor": "operator_staff-user"}
    elif role == "read_only_staff":
        assert shown.status_code == 200 and 'id="dagger-resume"' not in shown.content.decode()
        assert confirm.status_code == 403 and done.status_code == 403
    elif role == "anonymous":
        assert "/admin/login/" in confirm["Location"] and "/admin/login/" in done["Location"]


# -- skip and complete in the node table ----------------------------------------------------------------------
def test_a_waiting_listener_has_skip_and_complete_buttons_and_skip_moves_the_workflow_on(
    staff: Client, dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting(waiting_template, dispatcher)
    wait = listener(wf.id)
    ship = stored_nodes.get(workflow_id=wf.id, name__endswith="ship_executor_task")
    html = staff.get(page(wf.id)).content.decode()
    row = html[html.index(f'data-node-row="{wait.id}"') :].split("</tr>")[0]
    assert f'href="{node_url(wf.id, wait.id, "skip")}"' in row
    assert f'href="{node_url(wf.id, wait.id, "complete")}"' in row
    ship_row = html[html.index(f'data-node-row="{ship.id}"') :].split("</tr>")[0]
    assert "dagger-node-action" not in ship_row  # not started: nothing to skip yet

    confirm = staff.get(node_url(wf.id, wait.id, "skip")).content.decode()
    assert f"task {wait.name}" in confirm and 'name="reason"' in confirm
    response = staff.post(node_url(wf.id, wait.id, "skip"), {"reason": "paid at the counter"}, follow=True)
    dispatcher.drain()

    assert f"Skipped task {wait.name} (paid at the counter)." in response.content.decode()
    assert listener(wf.id).status == S.SKIPPED and status(wf.id) == S.COMPLETED
    assert event(wf.id, "skipped_by_operator").detail == {"actor": "boss", "reason": "paid at the counter"}


def test_complete_of_a_failed_task_from_its_row_moves_the_workflow_on(staff: Client, dispatcher: Any) -> None:
    wf = b.linear("AdminCompleteFailed", (t.Boom, "boom"), (t.Record, "after")).create_instance(
        submit_task=True
    )
    dispatcher.drain()
    boom = stored_nodes.get(workflow_id=wf.id, name__endswith="boom_executor_task")
    assert f'href="{node_url(wf.id, boom.id, "complete")}"' in staff.get(page(wf.id)).content.decode()

    response = staff.post(node_url(wf.id, boom.id, "complete"), {"reason": ""}, follow=True)
    dispatcher.drain()

    assert f"Completed task {boom.name}." in response.content.decode()
    assert status(wf.id) == S.COMPLETED
    assert event(wf.id, "completed_by_operator").detail == {"actor": "boss"}


def test_a_refused_task_action_is_reported_and_changes_nothing(
    staff: Client, dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting(waiting_template, dispatcher)
    ship = stored_nodes.get(workflow_id=wf.id, name__endswith="ship_executor_task")
    response = staff.post(node_url(wf.id, ship.id, "complete"), {"reason": "x"}, follow=True)
    assert "Complete refused:" in response.content.decode() and "has not started" in response.content.decode()
    assert stored_nodes.get(pk=ship.pk).status == S.NOT_STARTED
    unknown = staff.post(node_url(wf.id, "0b1e4e3e-0000-4000-8000-000000000000", "skip"), follow=True)
    assert "has no task" in unknown.content.decode()
    assert staff.get(node_url(wf.id, ship.id, "explode")).status_code == 404


@pytest.mark.parametrize("role", ADMIN_ROLES)
def test_task_buttons_need_the_operate_permission(
    django_user_model: Any, dispatcher: Any, waiting_template: Any, role: str
) -> None:
    wf = waiting(waiting_template, dispatcher)
    wait = listener(wf.id)
    client = admin_client(django_user_model, role)
    shown = client.get(page(wf.id))
    confirm = client.get(node_url(wf.id, wait.id, "complete"))
    done = client.post(node_url(wf.id, wait.id, "complete"), {"reason": "r"})
    dispatcher.drain()

    operator = role == "operator_staff"
    assert (listener(wf.id).status == S.COMPLETED) is operator
    if operator:
        assert 'class="dagger-node-action' in shown.content.decode()
        assert confirm.status_code == 200 and done.status_code == 302
    elif role == "read_only_staff":
        assert shown.status_code == 200 and 'class="dagger-node-action' not in shown.content.decode()
        assert confirm.status_code == 403 and done.status_code == 403
    elif role == "anonymous":
        assert "/admin/login/" in done["Location"]


# -- runtime parameters -------------------------------------------------------------------------------------
def test_edit_runtime_parameters_validates_the_json_and_records_who_and_why(
    staff: Client, dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting(waiting_template, dispatcher, order_id="typo")
    url = reverse("admin:dagger_django_workflow_parameters", args=[wf.id])
    assert f'href="{url}"' in staff.get(page(wf.id)).content.decode()
    form = staff.get(url).content.decode()
    assert 'name="parameters"' in form and "&quot;order_id&quot;: &quot;typo&quot;" in form

    for text, problem in (("{not json", "Not JSON"), ("[1, 2]", "must be a JSON object")):
        shown = staff.post(url, {"parameters": text, "reason": "fix"}).content.decode()
        assert problem in shown and 'id="dagger-parameters-error"' in shown
    assert Workflow.objects.get(pk=wf.id).runtime_parameters == {"order_id": "typo"}

    response = staff.post(
        url, {"parameters": '{"order_id": "o-9"}', "reason": "typo in the order"}, follow=True
    )
    assert f"Changed the runtime parameters of {wf.id} (typo in the order)." in response.content.decode()
    assert Workflow.objects.get(pk=wf.id).runtime_parameters == {"order_id": "o-9"}
    changed = event(wf.id, "parameters_changed")
    assert changed.detail == {
        "changed": ["order_id"],
        "removed": [],
        "actor": "boss",
        "reason": "typo in the order",
    }
    assert messages.message_receive(topic="orders", payload={"order_id": "o-9"}).matched == 1  # re-keyed


@pytest.mark.parametrize("role", ["read_only_staff", "operator_staff"])
def test_edit_runtime_parameters_needs_the_operate_permission(
    django_user_model: Any, dispatcher: Any, waiting_template: Any, role: str
) -> None:
    wf = waiting(waiting_template, dispatcher, order_id="a")
    client = admin_client(django_user_model, role)
    url = reverse("admin:dagger_django_workflow_parameters", args=[wf.id])
    shown = client.get(page(wf.id)).content.decode()
    done = client.post(url, {"parameters": '{"order_id": "b"}'})
    operator = role == "operator_staff"
    assert (Workflow.objects.get(pk=wf.id).runtime_parameters == {"order_id": "b"}) is operator
    assert ('id="dagger-edit-parameters"' in shown) is operator
    assert done.status_code == (302 if operator else 403)


# -- timers ---------------------------------------------------------------------------------------------
def trigger_workflow(dispatcher: Any) -> Any:
    from .engine.test_timing import one_process, step, trigger

    wf = one_process("AdminFireNow", trigger("remind"), step("after")).create_instance(
        submit_task=True, run_at=dispatcher_now() + 3600
    )
    dispatcher.drain()
    return wf


def dispatcher_now() -> float:
    from dagger_django.engine import ports

    return ports.now().timestamp()


@pytest.mark.parametrize("role", ADMIN_ROLES)
def test_fire_now_action_of_the_timers_needs_the_operate_permission(
    django_user_model: Any, dispatcher: Any, role: str
) -> None:
    wf = trigger_workflow(dispatcher)
    timer = Timer.objects.get(workflow_id=wf.id)
    client = admin_client(django_user_model, role)
    if role != "anonymous":  # the timers page needs the timer model's view permission
        from django.contrib.auth.models import Permission

        user = django_user_model.objects.get(username=f"{role}-user")
        user.user_permissions.add(Permission.objects.get(codename="view_timer"))
    listing = client.get("/admin/dagger_django/timer/")
    response = post_action(client, "timer", "fire_now", [timer.pk])
    dispatcher.drain()

    operator = role == "operator_staff"
    assert (status(wf.id) == S.COMPLETED) is operator
    assert ('value="fire_now"' in listing.content.decode()) is operator
    if operator:
        assert Timer.objects.get(pk=timer.pk).status == TimerStatus.FIRED
        assert event(wf.id, "timer_fired_by_operator").detail["actor"] == "operator_staff-user"
        again = post_action(client, "timer", "fire_now", [timer.pk])
        assert again.status_code == 302
    else:
        assert response.status_code in (200, 302, 403)


def test_fire_timer_from_the_workflow_page_confirms_then_fires(staff: Client, dispatcher: Any) -> None:
    wf = trigger_workflow(dispatcher)
    timer = Timer.objects.get(workflow_id=wf.id)
    url = reverse("admin:dagger_django_workflow_fire_timer", args=[wf.id, timer.pk])
    assert staff.get(url).status_code == 200 and status(wf.id) == S.EXECUTING
    response = staff.post(url, {"reason": "customer asked now"}, follow=True)
    dispatcher.drain()
    assert f"Fired timer {timer.pk} of workflow {wf.id} (customer asked now)." in response.content.decode()
    assert status(wf.id) == S.COMPLETED
    again = staff.post(url, follow=True).content.decode()
    assert "Fire now refused:" in again and "COMPLETED; its timers do not fire" in again


# -- replay ---------------------------------------------------------------------------------------------
def test_inbox_replay_records_the_user_on_the_message_and_in_the_workflow(
    staff: Client, dispatcher: Any, waiting_template: Any
) -> None:
    early = messages.message_receive(topic="orders", payload={"order_id": "late"})
    assert early.status == InboxStatus.UNMATCHED
    wf = waiting(waiting_template, dispatcher, order_id="late")

    staff.post(
        "/admin/dagger_django/inboxmessage/",
        {"action": "replay_messages", "_selected_action": [early.inbox_id]},
    )
    dispatcher.drain()

    assert InboxMessage.objects.get(pk=early.inbox_id).replayed_by == "boss"
    assert event(wf.id, "message_replayed").detail == {
        "message": early.inbox_id,
        "topic": "orders",
        "actor": "boss",
    }
    assert status(wf.id) == S.COMPLETED
    shown = staff.get(f"/admin/dagger_django/inboxmessage/{early.inbox_id}/change/").content.decode()
    assert "boss" in shown
