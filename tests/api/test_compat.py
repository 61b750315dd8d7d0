"""The original wf-dagger's endpoints (``dagger_django.api.compat``, docs/porting.md): their
shapes, their pages, and who may read them (the API's roles, tests/api/test_permissions.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from dagger_django import Dagger, KafkaListenerTask
from dagger_django.engine import messages, services
from dagger_django.models import Status, Workflow
from tests.api.test_api import assert_error
from tests.api.test_permissions import READERS, ROLES, SECRET, assert_refused, client_for
from tests.engine import builders as b
from tests.engine import tasks as t

pytestmark = pytest.mark.django_db

TEMPLATE = "CompatOrder"
#: The original's ``ITemplateDAGInstance`` fields, as its ``/tasks/instance/{id}`` gave them.
ROOT_FIELDS = {
    "id", "task_name", "task_type", "parent_id", "status", "time_created", "time_submitted",
    "time_completed", "lastupdated", "next_dags", "root_dag", "message", "allow_skip_to",
    "reprocess_on_message", "correlatable_key", "template_name", "partition_key_lookup",
    "runtime_parameters", "update_count", "sensor_tasks_to_correletable_map", "tasks",
}  # fmt: skip
#: The original's ``ITask`` fields, every node has them.
TASK_FIELDS = {
    "id", "task_name", "task_type", "parent_id", "status", "time_created", "time_submitted",
    "time_completed", "next_dags", "root_dag", "message", "allow_skip_to", "reprocess_on_message",
    "correlatable_key",
}  # fmt: skip


class Paid(KafkaListenerTask):
    correlatable_key = "order_id"

    def get_correlatable_key(self, payload: Any) -> Any:
        return ("order_id", payload["order_id"])

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True


@pytest.fixture
def template() -> Any:
    """P[main: wait (listener on "orders", correlated by order_id) -> ship]"""
    listen = b.helper.generic_listener_task_builder(topic="orders", task_type=Paid, process_name="wait")
    tmpl = b.template(
        TEMPLATE, b.process("main", b.helper.build_and_link_tasks([listen, b.task(t.Record, "ship")]))
    )
    Dagger.template_dags[TEMPLATE] = tmpl
    yield tmpl
    Dagger.template_dags.pop(TEMPLATE, None)


def order(template: Any, order_id: str) -> Workflow:
    return services.workflow_create(
        template=template,
        partition_key_lookup="order_id",
        runtime_parameters={"order_id": order_id, "note": SECRET},
        submit=True,
    )


def get(client: APIClient, path: str) -> Any:
    return client.get(path, HTTP_ACCEPT="application/json")


# --------------------------------------------------------------------------------------------------
# service/ready
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/service/ready", "/service/ready/"])
def test_service_ready_answers_is_ready_to_anyone(path: str) -> None:
    response = APIClient().get(path)
    assert response.status_code == 200
    assert response.json() == {"is_ready": True}
    assert response["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------------------------------
# tasks/instance/{id}
# --------------------------------------------------------------------------------------------------
def test_task_instance_is_the_workflow_in_the_originals_shape(
    django_user_model: Any, dispatcher: Any, template: Any
) -> None:
    wf = order(template, "o-1")
    dispatcher.drain()
    body = get(client_for(django_user_model, "reader"), f"/tasks/instance/{wf.id}").json()
    assert set(body) == ROOT_FIELDS
    assert (body["id"], body["task_type"], body["template_name"]) == (str(wf.id), "ROOT", TEMPLATE)
    assert body["status"] == {"code": Status.EXECUTING, "value": Status.EXECUTING}
    assert body["partition_key_lookup"] == "order_id"
    assert body["runtime_parameters"] == {"order_id": "o-1", "note": SECRET}
    assert isinstance(body["time_created"], int) and body["time_created"] > 0
    assert body["time_completed"] == 0  # the original's "never"
    tasks = body["tasks"]
    assert all(TASK_FIELDS <= set(task) and task["id"] == key for key, task in tasks.items())
    by_name = {task["task_name"].rsplit(".", 1)[-1]: task for task in tasks.values()}
    process, wait, ship = by_name["main"], by_name["wait_listener_task"], by_name["ship_executor_task"]
    assert body["root_dag"] == process["id"]
    assert (process["task_type"], process["parent_id"], process["root_dag"]) == (
        "SUB_DAG",
        str(wf.id),
        wait["id"],
    )
    assert process["process_name"] == "main"
    assert (wait["task_type"], wait["parent_id"], wait["next_dags"]) == ("LEAF", process["id"], [ship["id"]])
    assert (wait["topic"], wait["correlatable_key"]) == ("orders", "order_id")
    assert wait["status"]["code"] == Status.EXECUTING and ship["status"]["code"] == Status.NOT_STARTED
    assert body["sensor_tasks_to_correletable_map"] == {
        wait["id"]: {"correlatable_key_attr": "order_id", "correlatable_key_attr_value": "o-1"}
    }


@pytest.mark.django_db(transaction=True)  # the message's delivery is dispatched on commit
def test_task_instance_of_a_completed_workflow_has_its_times(
    django_user_model: Any, dispatcher: Any, template: Any
) -> None:
    wf = order(template, "o-2")
    dispatcher.drain()
    routed = messages.message_receive(topic="orders", payload={"order_id": "o-2"})
    assert routed.matched == 1
    dispatcher.drain()
    body = get(client_for(django_user_model, "reader"), f"/tasks/instance/{wf.id}/").json()
    assert body["status"]["code"] == Status.COMPLETED
    assert body["time_completed"] >= body["time_submitted"] >= body["time_created"] > 0
    assert {task["status"]["code"] for task in body["tasks"].values()} == {Status.COMPLETED}
    assert body["update_count"] >= 1


@pytest.mark.parametrize("dag_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_task_instance_of_an_unknown_id_is_a_404(django_user_model: Any, dag_id: str) -> None:
    assert_error(
        get(client_for(django_user_model, "reader"), f"/tasks/instance/{dag_id}"), 404, "workflow_not_found"
    )


@pytest.mark.parametrize("role", ROLES)
def test_task_instance_needs_the_view_permission(
    django_user_model: Any, dispatcher: Any, template: Any, role: str
) -> None:
    wf = order(template, "o-3")
    response = get(client_for(django_user_model, role), f"/tasks/instance/{wf.id}")
    if role in READERS:
        assert response.status_code == 200 and response.json()["id"] == str(wf.id)
    else:
        assert_refused(response, role, secrets=(SECRET, str(wf.id)))


# --------------------------------------------------------------------------------------------------
# tasks/instances
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_task_instances_needs_the_view_permission(
    django_user_model: Any, dispatcher: Any, template: Any, role: str
) -> None:
    wf = order(template, "o-4")
    response = get(client_for(django_user_model, role), "/tasks/instances")
    if role in READERS:
        assert response.status_code == 200 and [row["id"] for row in response.json()] == [str(wf.id)]
    else:
        assert_refused(response, role, secrets=(SECRET, str(wf.id)))


def test_task_instances_is_a_list_of_whole_workflows_newest_first_in_pages(
    django_user_model: Any, dispatcher: Any, template: Any
) -> None:
    ids = [str(order(template, f"p-{i}").id) for i in range(5)]
    newest_first = [w for w in Workflow.objects.order_by("-time_created", "-id").values_list("id", flat=True)]
    assert sorted(map(str, newest_first)) == sorted(ids)
    client = client_for(django_user_model, "reader")

    first = get(client, "/tasks/instances?limit=2")
    assert first.status_code == 200
    assert [row["id"] for row in first.json()] == [str(pk) for pk in newest_first[:2]]
    assert all(set(row) == ROOT_FIELDS and len(row["tasks"]) == 3 for row in first.json())
    assert 'rel="next"' in first["Link"] and 'rel="prev"' not in first["Link"]
    middle = get(client, "/tasks/instances?limit=2&offset=2")
    assert [row["id"] for row in middle.json()] == [str(pk) for pk in newest_first[2:4]]
    assert 'rel="next"' in middle["Link"] and 'rel="prev"' in middle["Link"]
    last = get(client, "/tasks/instances/?limit=2&offset=4")
    assert [row["id"] for row in last.json()] == [str(newest_first[4])]
    assert 'rel="next"' not in last["Link"]
    assert get(client, "/tasks/instances?limit=2&offset=10").json() == []


def test_task_instances_takes_the_api_lists_filters(
    django_user_model: Any, dispatcher: Any, template: Any
) -> None:
    waiting, _other = order(template, "f-1"), order(template, "f-2")
    services.workflow_stop(workflow_id=waiting.id, actor="ops")
    client = client_for(django_user_model, "reader")
    stopped = get(client, f"/tasks/instances?status={Status.STOPPED}").json()
    assert [row["id"] for row in stopped] == [str(waiting.id)]
    assert [row["id"] for row in get(client, "/tasks/instances?key=f-2").json()] == [str(_other.id)]


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "offset=-1", "status=NOPE"])
def test_task_instances_refuses_bad_paging_and_filters(django_user_model: Any, query: str) -> None:
    assert_error(get(client_for(django_user_model, "reader"), f"/tasks/instances?{query}"), 400, "invalid")


def test_task_instances_reads_a_page_in_a_fixed_number_of_queries(
    django_user_model: Any, dispatcher: Any, template: Any
) -> None:
    client = client_for(django_user_model, "reader")
    get(client, "/tasks/instances")  # the user's permissions are read once, then cached
    counts = []
    for batch in (2, 12):
        for i in range(batch):
            order(template, f"q-{batch}-{i}")
        with CaptureQueriesContext(connection) as captured:
            assert len(get(client, "/tasks/instances?limit=100").json()) >= batch
        counts.append(len(captured.captured_queries))
    assert counts[0] == counts[1] <= 3, counts  # the page's ids, its workflows, their nodes
