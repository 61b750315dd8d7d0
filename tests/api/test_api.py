"""The HTTP API, end to end through DRF's test client on the real database.

Work the engine dispatches runs in-process through the in-memory dispatcher (``drain()``); tests
that need it are transactional, because dispatch happens in ``on_commit`` callbacks.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from dagger_django import DAGBuilderHelper, Dagger, ExecutorTask
from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.engine import selectors, services
from dagger_django.models import Status, Workflow, WorkflowTemplate

TEMPLATE = "ApiTestWorkflow"
BASE = "/api/dagger"


class ApiStep(ExecutorTask):
    """Fails while runtime parameter ``fail`` is true; otherwise appends its name to ``done``."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        if runtime_parameters.get("fail"):
            raise RuntimeError("asked to fail")
        runtime_parameters.setdefault("done", []).append(str(self.task_name).rsplit(".", 1)[-1])


@Dagger.register_template(TEMPLATE)
def api_test_workflow(template_name: str) -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    first = helper.generic_executor_task_builder(task_type=ApiStep, name="first")
    second = helper.generic_executor_task_builder(task_type=ApiStep, name="second")
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks([first, second])
    )
    return helper.generic_template(
        template_name=template_name, root_process=helper.build_and_link_processes([process])
    )


# --------------------------------------------------------------------------------------------------
# helpers (the fixtures: tests/api/conftest.py)
# --------------------------------------------------------------------------------------------------
def create(api: APIClient, body: Any = None, **kwargs: Any) -> Any:
    payload = {"template": TEMPLATE, "runtime_parameters": {}} if body is None else body
    return api.post(f"{BASE}/workflows/", payload, format="json", **kwargs)


def create_raw(api: APIClient, raw: str | bytes, content_type: str = "application/json") -> Any:
    return api.generic("POST", f"{BASE}/workflows/", raw, content_type=content_type)


def new_workflow(**parameters: Any) -> Workflow:
    """A workflow created (and submitted) through the engine, as other clients would."""
    return services.workflow_create(
        template=Dagger.get_template(TEMPLATE),
        partition_key_lookup="order_id" if "order_id" in parameters else None,
        runtime_parameters=parameters,
        submit=True,
    )


def assert_error(response: Any, http_status: int, code: str) -> dict[str, Any]:
    assert response.status_code == http_status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def short_names(tasks: list[dict[str, Any]]) -> list[str]:
    return [t["name"].rsplit(".", 1)[-1] for t in tasks]


# --------------------------------------------------------------------------------------------------
# creating workflows
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_created_workflow_is_submitted_and_its_detail_shows_every_task_completed(
    api: APIClient, dispatcher: InMemoryDispatcher
) -> None:
    response = create(api, {"template": TEMPLATE, "runtime_parameters": {"order_id": "o-1"}})

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["template"] == TEMPLATE
    assert body["version"] == 1
    assert body["status"] == Status.EXECUTING
    assert body["runtime_parameters"] == {"order_id": "o-1"}
    assert response["Location"].endswith(f"{BASE}/workflows/{body['id']}/")
    assert short_names(body["tasks"]) == ["main", "first_executor_task", "second_executor_task"]

    dispatcher.drain()
    detail = api.get(f"{BASE}/workflows/{body['id']}/").json()

    assert detail["status"] == Status.COMPLETED
    assert detail["time_completed"] is not None
    assert detail["runtime_parameters"]["done"] == ["first_executor_task", "second_executor_task"]
    assert [t["status"] for t in detail["tasks"]] == [Status.COMPLETED] * 3
    process, first, second = detail["tasks"]
    assert (process["type"], process["kind"], process["parent"]) == ("SUB_DAG", "process", None)
    assert (first["type"], first["kind"], first["parent"]) == ("LEAF", "executor", process["id"])
    assert second["parent"] == process["id"]
    assert first["attempts"] == 1 and first["error"] == ""
    assert set(first) == {
        "id",
        "name",
        "type",
        "kind",
        "status",
        "parent",
        "attempts",
        "error",
        "time_submitted",
        "time_completed",
        "stop_hook",
        "stop_hook_at",
    }


@pytest.mark.django_db
def test_create_with_id_and_partition_key_lookup_keeps_the_id_and_sets_the_business_key(
    api: APIClient,
) -> None:
    wanted = uuid.uuid4()
    response = create(
        api,
        {
            "template": TEMPLATE,
            "id": str(wanted),
            "partition_key_lookup": "order_id",
            "runtime_parameters": {"order_id": "A-17"},
        },
    )

    assert response.status_code == 201, response.content
    assert response.json()["id"] == str(wanted)
    assert response.json()["business_key"] == "A-17"
    assert response.json()["partition_key_lookup"] == "order_id"


@pytest.mark.django_db
def test_create_with_an_id_already_taken_is_409(api: APIClient) -> None:
    wanted = str(uuid.uuid4())
    assert create(api, {"template": TEMPLATE, "id": wanted, "runtime_parameters": {}}).status_code == 201

    assert_error(
        create(api, {"template": TEMPLATE, "id": wanted, "runtime_parameters": {}}), 409, "invalid_state"
    )
    assert Workflow.objects.count() == 1


@pytest.mark.django_db
def test_create_without_runtime_parameters_uses_an_empty_object(api: APIClient) -> None:
    response = create(api, {"template": TEMPLATE})

    assert response.status_code == 201, response.content
    assert response.json()["runtime_parameters"] == {}


@pytest.mark.django_db
def test_create_from_an_unknown_template_is_404_and_stores_nothing(api: APIClient) -> None:
    body = assert_error(
        create(api, {"template": "NoSuchWorkflow", "runtime_parameters": {}}), 404, "template_not_found"
    )

    assert "NoSuchWorkflow" in body["detail"]
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "parameters", [[1, 2], "text", 3, True, None], ids=["list", "str", "number", "bool", "null"]
)
def test_create_with_runtime_parameters_that_are_not_an_object_is_400_and_stores_nothing(
    api: APIClient, parameters: Any
) -> None:
    body = assert_error(create(api, {"template": TEMPLATE, "runtime_parameters": parameters}), 400, "invalid")

    assert "runtime_parameters" in body["fields"]
    assert "runtime_parameters" in body["detail"]
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_create_without_a_template_is_400_naming_the_field(api: APIClient) -> None:
    body = assert_error(create(api, {"runtime_parameters": {}}), 400, "invalid")

    assert set(body["fields"]) == {"template"}
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_create_with_a_body_that_is_not_an_object_is_400(api: APIClient) -> None:
    assert_error(create(api, [TEMPLATE]), 400, "invalid")
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "raw", ["{not json", '{"template": ', b"\xff\xfe{}", '{"a": NaN}'], ids=["garbage", "cut", "bytes", "nan"]
)
def test_create_with_malformed_json_is_400_in_the_api_error_shape(api: APIClient, raw: str | bytes) -> None:
    assert_error(create_raw(api, raw), 400, "malformed_json")
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_create_with_json_nested_too_deeply_is_400_not_500(api: APIClient) -> None:
    raw = (
        '{"template": "ApiTestWorkflow", "runtime_parameters": {"x": ' + "[" * 200_000 + "]" * 200_000 + "}}"
    )

    assert_error(create_raw(api, raw), 400, "malformed_json")
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_create_with_a_form_body_is_415(api: APIClient) -> None:
    response = api.post(f"{BASE}/workflows/", {"template": TEMPLATE})

    assert_error(response, 415, "unsupported_media_type")
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_create_with_an_id_that_is_not_a_uuid_is_400(api: APIClient) -> None:
    body = assert_error(
        create(api, {"template": TEMPLATE, "id": "not-a-uuid", "runtime_parameters": {}}), 400, "invalid"
    )

    assert set(body["fields"]) == {"id"}
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_create_with_runtime_parameters_over_the_size_limit_is_413_and_stores_nothing(
    api: APIClient, settings: Any
) -> None:
    settings.DAGGER = {"MAX_RUNTIME_PARAMETERS_BYTES": 100}

    response = create(api, {"template": TEMPLATE, "runtime_parameters": {"blob": "x" * 200}})

    assert_error(response, 413, "runtime_parameters_too_large")
    assert Workflow.objects.count() == 0
    assert WorkflowTemplate.objects.count() == 0


@pytest.mark.django_db
def test_create_with_a_nul_character_the_database_cannot_store_is_400_and_stores_nothing(
    api: APIClient,
) -> None:
    response = create(api, {"template": TEMPLATE, "runtime_parameters": {"note": "a\u0000b"}})

    assert response.status_code == 400, response.content
    assert response.json()["error"] in {"invalid_data", "invalid_runtime_parameters"}
    assert Workflow.objects.count() == 0


# --------------------------------------------------------------------------------------------------
# listing and reading
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_list_is_newest_first_and_filters_by_status_template_and_business_key(api: APIClient) -> None:
    a = new_workflow(order_id="A")
    b = new_workflow(order_id="B")
    c = new_workflow(note="no key")
    services.workflow_stop(workflow_id=b.id)

    everything = api.get(f"{BASE}/workflows/").json()
    assert everything["count"] == 3
    assert [row["id"] for row in everything["results"]] == [str(c.id), str(b.id), str(a.id)]
    assert set(everything["results"][0]) == {
        "id",
        "url",
        "template",
        "version",
        "status",
        "business_key",
        "time_created",
        "time_completed",
        "updated_at",
    }

    def ids(query: str) -> list[str]:
        response = api.get(f"{BASE}/workflows/?{query}")
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    assert ids("status=STOPPED") == [str(b.id)]
    assert ids("status=EXECUTING") == [str(c.id), str(a.id)]
    assert ids("key=A") == [str(a.id)]
    assert ids("key=a") == []
    assert ids(f"template={TEMPLATE}&status=EXECUTING&key=A") == [str(a.id)]
    assert ids("template=Other") == []
    assert ids("status=&template=&key=") == [str(c.id), str(b.id), str(a.id)]
    assert everything["results"][0]["url"] == f"http://testserver{BASE}/workflows/{c.id}/"


@pytest.mark.django_db
def test_list_is_paginated_with_limit_and_offset(api: APIClient) -> None:
    created = [new_workflow(n=i) for i in range(5)]
    newest_first = [str(w.id) for w in reversed(created)]

    page = api.get(f"{BASE}/workflows/?limit=2&offset=2").json()

    assert (page["count"], page["count_exact"]) == (5, True)
    assert [row["id"] for row in page["results"]] == newest_first[2:4]
    assert "offset=4" in page["next"] and page["previous"] is not None
    assert api.get(f"{BASE}/workflows/?limit=junk").json()["count"] == 5


@pytest.mark.django_db
def test_list_count_stops_at_the_limit_and_says_so_but_pages_go_on(api: APIClient, settings: Any) -> None:
    settings.DAGGER = {**getattr(settings, "DAGGER", {}), "LIST_COUNT_LIMIT": 3}
    created = [new_workflow(n=i) for i in range(7)]
    newest_first = [str(w.id) for w in reversed(created)]

    first = api.get(f"{BASE}/workflows/?limit=2").json()
    assert (first["count"], first["count_exact"]) == (4, False)  # "at least 4": 3 counted, 1 more seen
    far = api.get(f"{BASE}/workflows/?limit=2&offset=4").json()
    assert (far["count"], far["count_exact"]) == (7, False)  # counted one past this page
    assert [row["id"] for row in far["results"]] == newest_first[4:6]
    assert "offset=6" in far["next"]
    last = api.get(f"{BASE}/workflows/?limit=2&offset=6").json()
    assert [row["id"] for row in last["results"]] == newest_first[6:]
    assert (last["count"], last["count_exact"], last["next"]) == (7, True, None)

    settings.DAGGER = {**settings.DAGGER, "LIST_COUNT_LIMIT": 0}  # 0: a full count
    assert api.get(f"{BASE}/workflows/?limit=2").json()["count"] == 7


@pytest.mark.django_db
def test_list_with_an_unknown_status_is_400(api: APIClient) -> None:
    body = assert_error(api.get(f"{BASE}/workflows/?status=RUNNING"), 400, "invalid")

    assert set(body["fields"]) == {"status"}


@pytest.mark.django_db
@pytest.mark.parametrize("count", [3, 30])
def test_list_and_detail_take_a_constant_number_of_queries(
    api: APIClient, count: int, django_assert_max_num_queries: Any
) -> None:
    workflows = [new_workflow(order_id=f"k{i}") for i in range(count)]
    # The permission check loads the user's permissions once (two queries of the auth backend,
    # then cached on the user object): counted below are the queries of the reads themselves.
    assert api.get(f"{BASE}/templates/").status_code == 200

    with django_assert_max_num_queries(2):
        response = api.get(f"{BASE}/workflows/")
    assert response.status_code == 200 and len(response.json()["results"]) == count

    with django_assert_max_num_queries(2):
        response = api.get(f"{BASE}/workflows/{workflows[-1].id}/")
    assert response.status_code == 200 and len(response.json()["tasks"]) == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    "workflow_id", ["not-a-uuid", "12345", str(uuid.uuid4())], ids=["word", "number", "unknown"]
)
def test_detail_of_a_bad_or_unknown_id_is_404(api: APIClient, workflow_id: str) -> None:
    assert_error(api.get(f"{BASE}/workflows/{workflow_id}/"), 404, "workflow_not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["stop", "retry"])
def test_actions_on_a_bad_or_unknown_id_are_404(api: APIClient, action: str) -> None:
    assert_error(api.post(f"{BASE}/workflows/not-a-uuid/{action}/"), 404, "workflow_not_found")
    assert_error(api.post(f"{BASE}/workflows/{uuid.uuid4()}/{action}/"), 404, "workflow_not_found")


# --------------------------------------------------------------------------------------------------
# transitions
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_stop_is_200_with_the_detail_and_stopping_again_is_409(api: APIClient) -> None:
    workflow = new_workflow()

    response = api.post(f"{BASE}/workflows/{workflow.id}/stop/")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == Status.STOPPED
    assert {t["status"] for t in response.json()["tasks"]} == {Status.STOPPED}
    assert_error(api.post(f"{BASE}/workflows/{workflow.id}/stop/"), 409, "invalid_state")
    # The workflow's history says who stopped it.
    stopped = [e for e in selectors.workflow_events(workflow_id=workflow.id) if e.node_id is None]
    assert stopped[-1].to_status == Status.STOPPED
    assert stopped[-1].detail["actor"] == "api-user"


@pytest.mark.django_db
def test_stop_answers_200_even_when_the_stopped_workflow_is_deleted_at_once(
    api: APIClient, settings: Any
) -> None:
    workflow = new_workflow()
    settings.DAGGER = {"DELETE_WORKFLOW_ON_COMPLETE": True}

    response = api.post(f"{BASE}/workflows/{workflow.id}/stop/")

    assert response.status_code == 200, response.content
    assert response.json()["id"] == str(workflow.id)
    assert response.json()["status"] == Status.STOPPED
    assert not Workflow.objects.filter(pk=workflow.id).exists()


@pytest.mark.django_db
def test_retry_of_a_workflow_that_did_not_fail_is_409(api: APIClient) -> None:
    workflow = new_workflow()

    assert_error(api.post(f"{BASE}/workflows/{workflow.id}/retry/"), 409, "invalid_state")
    assert Workflow.objects.get(pk=workflow.id).status == Status.EXECUTING


@pytest.mark.django_db(transaction=True)
def test_failed_workflow_completes_when_retried_after_its_parameters_are_fixed(
    api: APIClient, dispatcher: InMemoryDispatcher
) -> None:
    workflow_id = create(api, {"template": TEMPLATE, "runtime_parameters": {"fail": True}}).json()["id"]
    dispatcher.drain()

    failed = api.get(f"{BASE}/workflows/{workflow_id}/").json()
    assert failed["status"] == Status.FAILURE
    first = failed["tasks"][1]
    assert first["status"] == Status.FAILURE and "asked to fail" in first["error"]
    assert failed["tasks"][2]["status"] == Status.NOT_STARTED

    fixed = api.patch(f"{BASE}/workflows/{workflow_id}/runtime-parameters/", {"fail": False}, format="json")
    assert fixed.status_code == 200, fixed.content
    assert fixed.json()["runtime_parameters"] == {"fail": False}

    retried = api.post(f"{BASE}/workflows/{workflow_id}/retry/")
    assert retried.status_code == 200, retried.content
    assert retried.json()["status"] == Status.EXECUTING

    dispatcher.drain()
    done = api.get(f"{BASE}/workflows/{workflow_id}/").json()
    assert done["status"] == Status.COMPLETED
    assert [t["status"] for t in done["tasks"]] == [Status.COMPLETED] * 3
    assert done["runtime_parameters"]["done"] == ["first_executor_task", "second_executor_task"]


# --------------------------------------------------------------------------------------------------
# runtime parameters
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_patch_runtime_parameters_merges_the_given_keys_and_keeps_the_others(api: APIClient) -> None:
    workflow = new_workflow(order_id="A", a=1, b={"x": 1})

    response = api.patch(
        f"{BASE}/workflows/{workflow.id}/runtime-parameters/",
        {"b": {"y": 2}, "c": [3], "order_id": "Z"},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert response.json()["runtime_parameters"] == {"order_id": "Z", "a": 1, "b": {"y": 2}, "c": [3]}
    assert response.json()["business_key"] == "Z"
    assert Workflow.objects.get(pk=workflow.id).runtime_parameters["c"] == [3]


@pytest.mark.django_db
@pytest.mark.parametrize("body", [[1, 2], "text", 7], ids=["list", "str", "number"])
def test_patch_runtime_parameters_with_a_body_that_is_not_an_object_is_400(api: APIClient, body: Any) -> None:
    workflow = new_workflow(a=1)

    response = api.patch(f"{BASE}/workflows/{workflow.id}/runtime-parameters/", body, format="json")

    assert_error(response, 400, "invalid_runtime_parameters")
    assert Workflow.objects.get(pk=workflow.id).runtime_parameters == {"a": 1}


@pytest.mark.django_db
def test_patch_runtime_parameters_with_malformed_json_is_400(api: APIClient) -> None:
    workflow = new_workflow(a=1)

    response = api.generic(
        "PATCH",
        f"{BASE}/workflows/{workflow.id}/runtime-parameters/",
        "{oops",
        content_type="application/json",
    )

    assert_error(response, 400, "malformed_json")


@pytest.mark.django_db
def test_patch_runtime_parameters_over_the_size_limit_is_413_and_changes_nothing(
    api: APIClient, settings: Any
) -> None:
    workflow = new_workflow(a=1)
    settings.DAGGER = {"MAX_RUNTIME_PARAMETERS_BYTES": 100}

    response = api.patch(
        f"{BASE}/workflows/{workflow.id}/runtime-parameters/", {"blob": "x" * 200}, format="json"
    )

    assert_error(response, 413, "runtime_parameters_too_large")
    assert Workflow.objects.get(pk=workflow.id).runtime_parameters == {"a": 1}


@pytest.mark.django_db
def test_patch_runtime_parameters_of_an_unknown_workflow_is_404(api: APIClient) -> None:
    response = api.patch(f"{BASE}/workflows/{uuid.uuid4()}/runtime-parameters/", {"a": 1}, format="json")

    assert_error(response, 404, "workflow_not_found")


# --------------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_templates_show_no_version_until_a_workflow_is_created_and_reading_stores_nothing(
    api: APIClient,
) -> None:
    template = Dagger.get_template(TEMPLATE)

    listed = {row["name"]: row for row in api.get(f"{BASE}/templates/").json()}
    assert listed[TEMPLATE] == {"name": TEMPLATE, "version": None, "digest": template.digest()}
    detail = api.get(f"{BASE}/templates/{TEMPLATE}/").json()
    assert detail["version"] is None
    assert detail["graph"] == json.loads(json.dumps(template.to_graph()))
    assert WorkflowTemplate.objects.count() == 0

    new_workflow()

    listed = {row["name"]: row for row in api.get(f"{BASE}/templates/").json()}
    assert listed[TEMPLATE]["version"] == 1
    assert api.get(f"{BASE}/templates/{TEMPLATE}/").json()["version"] == 1


@pytest.mark.django_db
def test_unknown_template_is_404(api: APIClient) -> None:
    assert_error(api.get(f"{BASE}/templates/NoSuchWorkflow/"), 404, "template_not_found")


# --------------------------------------------------------------------------------------------------
# authentication and errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/workflows/"),
        ("post", "/workflows/"),
        ("get", f"/workflows/{uuid.uuid4()}/"),
        ("post", f"/workflows/{uuid.uuid4()}/stop/"),
        ("patch", f"/workflows/{uuid.uuid4()}/runtime-parameters/"),
        ("get", "/templates/"),
        ("get", f"/templates/{TEMPLATE}/"),
    ],
)
def test_requests_without_credentials_are_refused_with_a_json_error(
    dispatcher: InMemoryDispatcher, method: str, path: str
) -> None:
    response = getattr(APIClient(), method)(f"{BASE}{path}", {}, format="json")

    assert response.status_code in (401, 403)
    assert_error(response, response.status_code, "not_authenticated")
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_wrong_basic_credentials_are_refused_with_a_json_error(operator_user: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic YXBpLXVzZXI6d3Jvbmc=")  # api-user:wrong

    response = client.get(f"{BASE}/workflows/")

    assert response.status_code in (401, 403)
    assert_error(response, response.status_code, "not_authenticated")


@pytest.mark.django_db
def test_right_basic_credentials_are_accepted(operator_user: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic YXBpLXVzZXI6c2VjcmV0LXB3")  # api-user:secret-pw

    assert client.get(f"{BASE}/workflows/").status_code == 200


@pytest.mark.django_db
def test_a_method_the_endpoint_does_not_have_is_405_json(api: APIClient) -> None:
    assert_error(api.delete(f"{BASE}/workflows/"), 405, "method_not_allowed")
    assert_error(api.get(f"{BASE}/workflows/{uuid.uuid4()}/stop/"), 405, "method_not_allowed")


# --------------------------------------------------------------------------------------------------
# health
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_health_is_open_without_credentials_and_reveals_no_data(api: APIClient, settings: Any) -> None:
    # Without Kafka configured the bridge check is null (tests/kafka covers it with a broker).
    settings.DAGGER = {k: v for k, v in (settings.DAGGER or {}).items() if not k.startswith("KAFKA")}
    new_workflow(order_id="secret-order")

    response = APIClient().get(f"{BASE}/health/")

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"database": True, "broker": True, "bridge": None}}
    assert b"secret-order" not in response.content


@pytest.mark.django_db
def test_health_ignores_credentials_even_wrong_ones() -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic bm9ib2R5Om5vdGhpbmc=")

    assert client.get(f"{BASE}/health/").status_code == 200


@pytest.mark.django_db
def test_health_is_503_degraded_when_the_broker_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import current_app

    monkeypatch.setattr(current_app.conf, "broker_write_url", "redis://127.0.0.1:1/0")

    response = APIClient().get(f"{BASE}/health/")

    assert response.status_code == 503
    assert response.json() == {
        "status": "degraded",
        "checks": {"database": True, "broker": False, "bridge": None},
    }


@pytest.mark.django_db(transaction=True)
def test_patch_runtime_parameters_of_a_finished_workflow_is_a_conflict(
    api: APIClient, dispatcher: InMemoryDispatcher
) -> None:
    created = create(api)
    dispatcher.drain()
    response = api.patch(
        f"{BASE}/workflows/{created.json()['id']}/runtime-parameters/", {"x": 1}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"] == "invalid_state"


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Count the calls of ``owner.name`` while still calling it (a spy, not a fake)."""
    calls: list[int] = []
    real = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.django_db
def test_health_calls_within_the_cache_window_open_one_broker_connection(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from celery import current_app

    settings.DAGGER = {**(settings.DAGGER or {}), "HEALTH_CACHE_SECONDS": 60.0}
    connections = _count_calls(monkeypatch, current_app, "connection_for_write")

    answers = [APIClient().get(f"{BASE}/health/") for _ in range(2)]

    assert [a.json()["checks"]["broker"] for a in answers] == [True, True]
    assert len(connections) == 1


@pytest.mark.django_db
def test_health_asks_the_broker_again_once_the_window_has_passed(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from celery import current_app

    settings.DAGGER = {**(settings.DAGGER or {}), "HEALTH_CACHE_SECONDS": 0.0}
    connections = _count_calls(monkeypatch, current_app, "connection_for_write")

    for _ in range(2):
        APIClient().get(f"{BASE}/health/")

    assert len(connections) == 2


@pytest.mark.django_db
def test_health_calls_within_the_cache_window_create_one_kafka_admin_client(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from confluent_kafka import admin

    # Nothing listens on port 1: each check fails fast (connection refused) and says so.
    settings.DAGGER = {**(settings.DAGGER or {}), "KAFKA": {"bootstrap.servers": "127.0.0.1:1"}}
    clients = _count_calls(monkeypatch, admin, "AdminClient")

    answers = [APIClient().get(f"{BASE}/health/") for _ in range(2)]

    assert [a.json()["checks"]["bridge"] for a in answers] == [False, False]
    assert [a.status_code for a in answers] == [503, 503]
    assert len(clients) == 1
