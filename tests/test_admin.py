"""The admin: workflow list, the graph on the change page, stop and retry actions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from dagger_django.models import Node, Status, Workflow
from dagger_django.testing import InMemoryDispatcher, engine_under_test

from .engine import builders as b
from .engine import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)
S = Status


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (dispatcher, _clock):
        yield dispatcher


@pytest.fixture
def staff(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(user)
    return client


def test_change_page_shows_the_graph_with_every_node_and_its_status(staff: Client, dispatcher: Any) -> None:
    wf = b.decision("AdminDecision").create_instance(submit_task=True, branch=1)
    dispatcher.drain()
    response = staff.get(f"/admin/dagger_django/workflow/{wf.id}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="dagger-graph"' in html
    for node in Node.objects.filter(workflow_id=wf.id):
        assert f'data-node="{node.id}" data-status="{node.status}"' in html
    assert html.count('data-status="SKIPPED"') == 2  # left and its successor


def test_graph_nests_parallel_branches_inside_their_group(staff: Client, dispatcher: Any) -> None:
    tmpl = b.parallel_tasks("AdminParallel", b.JOIN_ALL, b.task(t.SetFlag, "x").build(), b.listener("wait"))
    wf = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    html = staff.get(f"/admin/dagger_django/workflow/{wf.id}/change/").content.decode()
    group = Node.objects.get(workflow_id=wf.id, kind="parallel")
    start = html.index(f'data-node="{group.id}"')
    listener = Node.objects.get(workflow_id=wf.id, kind="listener")
    assert html.index(f'data-node="{listener.id}"') > start
    assert 'data-status="EXECUTING"' in html


def test_list_filters_by_status_and_searches_by_business_key(staff: Client, dispatcher: Any) -> None:
    tmpl = b.linear("AdminList", (t.Record, "a"))
    done = tmpl.create_instance(partition_key_lookup="order_id", submit_task=True, order_id="o-77")
    tmpl.create_instance(partition_key_lookup="order_id", order_id="o-78")
    dispatcher.drain()
    html = staff.get("/admin/dagger_django/workflow/?status__exact=COMPLETED").content.decode()
    assert str(done.id) in html and "o-78" not in html
    html = staff.get("/admin/dagger_django/workflow/?q=o-78").content.decode()
    assert "o-78" in html and str(done.id) not in html


def test_stop_action_stops_and_reports_refusals(staff: Client, dispatcher: Any) -> None:
    tmpl = b.parallel_tasks("AdminStop", b.JOIN_ALL, b.listener("w1"), b.listener("w2"))
    running = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    response = staff.post(
        "/admin/dagger_django/workflow/",
        {"action": "stop_workflows", "_selected_action": [str(running.id)]},
        follow=True,
    )
    assert response.status_code == 200
    assert Workflow.objects.get(pk=running.id).status == S.STOPPED
    response = staff.post(
        "/admin/dagger_django/workflow/",
        {"action": "stop_workflows", "_selected_action": [str(running.id)]},
        follow=True,
    )
    assert "cannot be stopped" in response.content.decode()


def test_retry_action_resumes_a_failed_workflow(staff: Client, dispatcher: Any) -> None:
    from dagger_django.engine import services

    wf = b.linear("AdminRetry", (t.Boom, "boom")).create_instance(submit_task=True)
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == S.FAILURE
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    staff.post(
        "/admin/dagger_django/workflow/",
        {"action": "retry_workflows", "_selected_action": [str(wf.id)]},
        follow=True,
    )
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == S.COMPLETED


def test_change_page_of_an_unknown_workflow_is_not_an_error(staff: Client, dispatcher: Any) -> None:
    response = staff.get("/admin/dagger_django/workflow/not-a-uuid/change/", follow=True)
    assert response.status_code == 200


def test_search_by_workflow_id_and_template_filter_use_exact_matches(staff: Client, dispatcher: Any) -> None:
    first = b.linear("AdminSearchA", (t.Record, "a")).create_instance(partition_key_lookup="k", k="key-a")
    second = b.linear("AdminSearchB", (t.Record, "a")).create_instance(partition_key_lookup="k", k="key-b")
    html = staff.get(f"/admin/dagger_django/workflow/?q={first.id}").content.decode()
    assert str(first.id) in html and str(second.id) not in html
    html = staff.get("/admin/dagger_django/workflow/?q=key-b").content.decode()
    assert str(second.id) in html and str(first.id) not in html
    html = staff.get("/admin/dagger_django/workflow/?template_name=AdminSearchA").content.decode()
    assert str(first.id) in html and str(second.id) not in html
    assert "AdminSearchB" in html  # offered as a filter choice from the template table
