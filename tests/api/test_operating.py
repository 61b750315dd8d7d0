"""Operating through the API: the root, the OpenAPI schema and its pages, a workflow's history and
the list's filters (docs/api.md), each with every role (anonymous, ``nobody``, ``reader``,
``operator``; tests/api/test_permissions.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.engine import selectors, services
from dagger_django.models import HistoryRecord, Status, Workflow, WorkflowTemplate
from tests.api.test_api import BASE, TEMPLATE, assert_error, new_workflow
from tests.api.test_permissions import READERS, ROLES, SECRET, assert_refused, client_for, grant

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(dispatcher: InMemoryDispatcher) -> Workflow:
    """EXECUTING (its first task submitted, never run: the dispatcher is not drained)."""
    return new_workflow(order_id=SECRET)


MS_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


# --------------------------------------------------------------------------------------------------
# the root
# --------------------------------------------------------------------------------------------------
ROOT_BY_ROLE = {
    "reader": {"templates", "workflows", "messages", "health", "schema", "docs", "redoc"},
    "operator": {"templates", "workflows", "messages", "events", "health", "schema", "docs", "redoc"},
}


@pytest.mark.parametrize("role", ROLES)
def test_the_root_lists_the_endpoints_the_user_may_use(django_user_model: Any, role: str) -> None:
    response = client_for(django_user_model, role).get(f"{BASE}/")

    if role not in READERS:
        assert_refused(response, role)
        return
    assert response.status_code == 200, response.content
    links = response.json()
    assert set(links) == ROOT_BY_ROLE[role]
    assert links["workflows"] == f"http://testserver{BASE}/workflows/"
    assert links["docs"] == f"http://testserver{BASE}/docs/"
    assert links["redoc"] == f"http://testserver{BASE}/docs/redoc/"


def test_the_root_for_a_user_who_may_only_post_events_lists_events_not_workflows(
    django_user_model: Any,
) -> None:
    user = grant(django_user_model.objects.create_user(username="poster", password="pw"), "post_event")
    client = APIClient()
    client.force_authenticate(user)

    links = client.get(f"{BASE}/").json()

    assert set(links) == {"events", "health", "schema", "docs", "redoc"}
    assert_refused(client.get(f"{BASE}/workflows/"), "poster")


def test_the_root_answers_only_get(django_user_model: Any) -> None:
    response = client_for(django_user_model, "operator").post(f"{BASE}/", {}, format="json")

    assert_error(response, 405, "method_not_allowed")


# --------------------------------------------------------------------------------------------------
# the schema and its pages
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_the_schema_needs_a_dagger_permission(django_user_model: Any, role: str) -> None:
    response = client_for(django_user_model, role).get(f"{BASE}/schema/?format=json")

    if role not in READERS:
        assert_refused(response, role)
        return
    assert response.status_code == 200, response.content
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "dagger_django API"
    assert f"{BASE}/workflows/{{workflow_id}}/history/" in schema["paths"]
    assert f"{BASE}/schema/" not in schema["paths"]  # the description does not describe itself


@pytest.mark.parametrize("path", ["schema/", "docs/", "docs/redoc/"])
@pytest.mark.parametrize("method", ["options", "post", "delete"])
def test_the_schema_and_its_pages_answer_only_get(django_user_model: Any, path: str, method: str) -> None:
    """OPTIONS rendered the pages' HTML templates with DRF's metadata and failed (a 500)."""
    response = getattr(client_for(django_user_model, "operator"), method)(f"{BASE}/{path}")

    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("version", ["%0D", "1%0A2", "v2"])
def test_a_version_in_the_query_is_ignored_by_the_schema(django_user_model: Any, version: str) -> None:
    """drf-spectacular put `?version=` into the Content-Disposition file name: a newline was a 500."""
    response = client_for(django_user_model, "reader").get(f"{BASE}/schema/?version={version}")

    assert response.status_code == 200, response.content
    assert response["Content-Disposition"] == 'inline; filename="dagger_django API.yaml"'


def test_the_schema_is_yaml_by_default(django_user_model: Any) -> None:
    response = client_for(django_user_model, "reader").get(f"{BASE}/schema/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert yaml.safe_load(response.content)["openapi"].startswith("3.")


@pytest.mark.parametrize("generator", ["dagger", "default"])
def test_the_schema_is_valid_and_generated_without_a_warning(tmp_path: Any, generator: str) -> None:
    """Whether drf-spectacular's own generator (the whole demo project) or dagger's (its views
    only) makes it; the two agree on the demo, whose only API is dagger's."""
    out = tmp_path / "schema.yml"
    chosen = (
        ["--generator-class", "dagger_django.api.schema.DaggerSchemaGenerator"]
        if generator == "dagger"
        else []
    )
    # Exits non-zero on a warning or an invalid schema.
    call_command("spectacular", "--validate", "--fail-on-warn", *chosen, "--file", str(out))
    schema = yaml.safe_load(out.read_text())

    paths = set(schema["paths"])
    assert {
        f"{BASE}/",
        f"{BASE}/templates/",
        f"{BASE}/templates/{{name}}/",
        f"{BASE}/workflows/",
        f"{BASE}/workflows/{{workflow_id}}/",
        f"{BASE}/workflows/{{workflow_id}}/history/",
        f"{BASE}/workflows/{{workflow_id}}/stop/",
        f"{BASE}/workflows/{{workflow_id}}/retry/",
        f"{BASE}/workflows/{{workflow_id}}/runtime-parameters/",
        f"{BASE}/workflows/{{workflow_id}}/resume/",
        f"{BASE}/workflows/{{workflow_id}}/nodes/{{node_id}}/skip/",
        f"{BASE}/workflows/{{workflow_id}}/nodes/{{node_id}}/complete/",
        f"{BASE}/workflows/{{workflow_id}}/timers/{{timer_id}}/fire/",
        f"{BASE}/messages/",
        f"{BASE}/messages/{{inbox_id}}/replay/",
        f"{BASE}/events/",
        f"{BASE}/health/",
    } == paths
    filters = {p["name"] for p in schema["paths"][f"{BASE}/workflows/"]["get"]["parameters"]}
    assert {"status", "template", "version", "key", "id", "created_after", "created_before"} <= filters
    assert {"stuck_for", "limit", "offset"} <= filters


def test_no_description_in_the_schema_is_restructured_text(django_user_model: Any) -> None:
    """The browsable API and the pages render descriptions as Markdown: no RST roles or literals."""
    text = client_for(django_user_model, "reader").get(f"{BASE}/schema/?format=json").content.decode()
    descriptions = re.findall(r'"description":\s*"((?:[^"\\]|\\.)*)"', text)

    assert descriptions
    rst = [d for d in descriptions if re.search(r"``|:(func|class|mod|meth|attr|data):`", d)]
    assert rst == []


def test_no_view_description_in_the_browsable_api_is_restructured_text() -> None:
    """DRF renders a view's docstring as Markdown in the browsable API."""
    from django.urls import URLPattern

    from dagger_django.api import urls

    described = []
    for pattern in urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view = pattern.callback.cls()  # type: ignore[attr-defined]
        text = view.get_view_description()
        described.append(pattern.name)
        assert text.strip(), f"{pattern.name} has no description"
        assert not re.search(r"``|:(func|class|mod|meth|attr|data):`", text), (pattern.name, text)
    assert {"api-root", "workflow-history", "schema", "docs", "redoc"} <= set(described)


def test_the_pages_are_routed_only_with_their_apps_installed(settings: Any) -> None:
    from dagger_django.api.schema import pages_installed

    assert pages_installed()
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "drf_spectacular_sidecar"]
    assert not pages_installed()


@pytest.mark.parametrize("page", ["docs/", "docs/redoc/"])
@pytest.mark.parametrize("role", ROLES)
def test_the_pages_need_a_dagger_permission_and_load_nothing_from_the_internet(
    django_user_model: Any, role: str, page: str
) -> None:
    client = client_for(django_user_model, role)
    response = client.get(f"{BASE}/{page}", HTTP_ACCEPT="text/html")

    if role not in READERS:
        assert_refused(response, role)
        return
    assert response.status_code == 200, response.content
    html = response.content.decode()
    assert response["Content-Type"].startswith("text/html")
    assert re.findall(r"https?://", html) == [], "the page must not fetch from the internet"
    assert "/static/drf_spectacular_sidecar/" in html
    assert f"{BASE}/schema/" in html
    if page == "docs/":
        assert '"validatorUrl": null' in html  # no call to validator.swagger.io
    # What the page's scripts draw from elsewhere (Redoc's logo) the browser must not fetch.
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
    assert "http" not in policy


# --------------------------------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_history_needs_the_view_permission(django_user_model: Any, running: Workflow, role: str) -> None:
    response = client_for(django_user_model, role).get(f"{BASE}/workflows/{running.id}/history/")

    if role not in READERS:
        assert_refused(response, role, secrets=(SECRET, str(running.id)))
        return
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("role", ROLES)
def test_history_answers_only_get(django_user_model: Any, running: Workflow, role: str) -> None:
    response = client_for(django_user_model, role).post(f"{BASE}/workflows/{running.id}/history/")

    if role in READERS:
        assert_error(response, 405, "method_not_allowed")
    else:
        assert_refused(response, role)


def test_history_lists_the_workflows_events_oldest_first_with_millisecond_times(
    django_user_model: Any, dispatcher: InMemoryDispatcher, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        workflow = new_workflow(order_id="h-1")
    with django_capture_on_commit_callbacks(execute=True):
        dispatcher.drain()
    expected = selectors.workflow_events(workflow_id=workflow.id)
    assert len(expected) > 4

    body = client_for(django_user_model, "reader").get(f"{BASE}/workflows/{workflow.id}/history/").json()

    assert (body["count"], body["count_exact"], body["next"], body["previous"]) == (
        len(expected),
        True,
        None,
        None,
    )
    events = body["results"]
    assert set(events[0]) == {
        "time",
        "node",
        "node_name",
        "from_status",
        "to_status",
        "attempt",
        "reason",
        "detail",
    }
    assert [(e["node_name"], e["from_status"], e["to_status"]) for e in events] == [
        (e.node_name, e.from_status, e.to_status) for e in expected
    ]
    assert [e["node"] for e in events] == [None if e.node_id is None else str(e.node_id) for e in expected]
    assert all(MS_TIME.match(e["time"]) for e in events), events[0]["time"]
    first = expected[0].created_at.astimezone(dt.UTC)
    assert events[0]["time"] == first.strftime("%Y-%m-%dT%H:%M:%S.") + f"{first.microsecond // 1000:03d}Z"
    assert events[-1]["to_status"] == Status.COMPLETED


def test_history_is_paginated_like_the_list(django_user_model: Any, running: Workflow) -> None:
    client = client_for(django_user_model, "reader")
    everything = client.get(f"{BASE}/workflows/{running.id}/history/").json()["results"]
    assert len(everything) >= 3

    page = client.get(f"{BASE}/workflows/{running.id}/history/?limit=2&offset=1").json()

    assert page["count"] == len(everything)
    assert page["results"] == everything[1:3]
    assert "offset=0" not in page["previous"] and page["previous"] is not None
    assert page["next"] is None if len(everything) <= 3 else "offset=3" in page["next"]


@pytest.mark.parametrize("workflow_id", ["not-a-uuid", str(uuid.uuid4())], ids=["word", "unknown"])
def test_history_of_a_bad_or_unknown_workflow_is_404(django_user_model: Any, workflow_id: str) -> None:
    response = client_for(django_user_model, "reader").get(f"{BASE}/workflows/{workflow_id}/history/")

    assert_error(response, 404, "workflow_not_found")


def test_history_of_a_workflow_with_no_history_yet_is_empty_not_404(
    django_user_model: Any, running: Workflow
) -> None:
    HistoryRecord.objects.filter(workflow_id=running.id).delete()

    body = client_for(django_user_model, "reader").get(f"{BASE}/workflows/{running.id}/history/").json()

    assert (body["count"], body["results"]) == (0, [])


def test_history_takes_one_query_and_the_detail_links_to_it(
    django_user_model: Any, running: Workflow, django_assert_max_num_queries: Any
) -> None:
    client = client_for(django_user_model, "reader")
    detail = client.get(f"{BASE}/workflows/{running.id}/").json()  # loads the user's permissions
    assert detail["url"] == f"http://testserver{BASE}/workflows/{running.id}/"
    assert detail["history"] == f"http://testserver{BASE}/workflows/{running.id}/history/"

    with django_assert_max_num_queries(1):
        response = client.get(detail["history"])
    assert response.status_code == 200


# --------------------------------------------------------------------------------------------------
# list filters
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def reader(django_user_model: Any, dispatcher: InMemoryDispatcher) -> APIClient:
    return client_for(django_user_model, "reader")


def _age(workflow: Workflow, *, created: dt.datetime, updated: dt.datetime | None = None) -> None:
    """Move a workflow (and its history) into the past."""
    Workflow.objects.filter(pk=workflow.pk).update(time_created=created, updated_at=updated or created)
    HistoryRecord.objects.filter(workflow_id=workflow.pk).update(created_at=updated or created)


def test_list_filters_by_id_exactly(reader: APIClient) -> None:
    a, b = new_workflow(n=1), new_workflow(n=2)

    assert ids(reader.get(f"{BASE}/workflows/?id={a.id}")) == [str(a.id)]
    assert ids(reader.get(f"{BASE}/workflows/?id={uuid.uuid4()}")) == []
    assert ids(reader.get(f"{BASE}/workflows/?id=")) == [str(b.id), str(a.id)]
    body = assert_error(reader.get(f"{BASE}/workflows/?id=not-a-uuid"), 400, "invalid")
    assert set(body["fields"]) == {"id"}


def test_list_filters_by_template_version(reader: APIClient) -> None:
    old = new_workflow(n=1)
    # A second version of the same template: the next workflow points at it.
    v1 = WorkflowTemplate.objects.get(name=TEMPLATE, version=1)
    v2 = WorkflowTemplate.objects.create(name=TEMPLATE, version=2, digest="f" * 64, graph={})
    new = new_workflow(n=2)
    Workflow.objects.filter(pk=new.pk).update(template=v2)
    assert old.template_id == v1.pk

    assert ids(reader.get(f"{BASE}/workflows/?version=1")) == [str(old.id)]
    assert ids(reader.get(f"{BASE}/workflows/?template={TEMPLATE}&version=2")) == [str(new.id)]
    assert ids(reader.get(f"{BASE}/workflows/?template=Other&version=2")) == []
    rows = reader.get(f"{BASE}/workflows/").json()["results"]
    assert [row["version"] for row in rows] == [2, 1]
    for bad in ("0", "x", "-1", "99999999999"):
        body = assert_error(reader.get(f"{BASE}/workflows/?version={bad}"), 400, "invalid")
        assert set(body["fields"]) == {"version"}


def test_list_filters_by_creation_time(reader: APIClient) -> None:
    now = timezone.now()
    old, middle, new = new_workflow(n=1), new_workflow(n=2), new_workflow(n=3)
    _age(old, created=now - dt.timedelta(days=3))
    _age(middle, created=now - dt.timedelta(days=2))
    _age(new, created=now - dt.timedelta(hours=1))

    def at(moment: dt.datetime) -> str:
        return quote(moment.isoformat())

    day_ago = now - dt.timedelta(days=1)
    assert ids(reader.get(f"{BASE}/workflows/?created_after={at(day_ago)}")) == [str(new.id)]
    assert ids(reader.get(f"{BASE}/workflows/?created_before={at(day_ago)}")) == [str(middle.id), str(old.id)]
    window = f"created_after={at(now - dt.timedelta(days=2, hours=1))}&created_before={at(day_ago)}"
    assert ids(reader.get(f"{BASE}/workflows/?{window}")) == [str(middle.id)]
    # The bound is inclusive after, exclusive before; a time without an offset is UTC.
    exact = Workflow.objects.get(pk=middle.pk).time_created
    assert ids(reader.get(f"{BASE}/workflows/?created_after={at(exact)}&created_before={at(day_ago)}")) == [
        str(middle.id)
    ]
    assert str(middle.id) not in ids(reader.get(f"{BASE}/workflows/?created_before={at(exact)}"))
    naive = exact.astimezone(dt.UTC).replace(tzinfo=None).isoformat()
    assert str(middle.id) in ids(reader.get(f"{BASE}/workflows/?created_after={naive}"))
    for bad in ("yesterday", "2026-13-01", "0000-01-01T00:00:00"):
        body = assert_error(reader.get(f"{BASE}/workflows/?created_after={bad}"), 400, "invalid")
        assert set(body["fields"]) == {"created_after"}


def test_list_finds_stuck_workflows(
    reader: APIClient, dispatcher: InMemoryDispatcher, django_capture_on_commit_callbacks: Any
) -> None:
    now = timezone.now()
    stuck = new_workflow(n=1)  # EXECUTING, nothing happened for an hour
    _age(stuck, created=now - dt.timedelta(hours=2), updated=now - dt.timedelta(hours=1))
    busy = new_workflow(n=2)  # EXECUTING, old, but its history moved a minute ago
    _age(busy, created=now - dt.timedelta(hours=2), updated=now - dt.timedelta(hours=1))
    HistoryRecord.objects.filter(
        pk=HistoryRecord.objects.filter(workflow_id=busy.pk).order_by("-id").values("pk")[:1]
    ).update(created_at=now - dt.timedelta(minutes=1))
    fresh = new_workflow(n=3)  # EXECUTING, just created
    done = new_workflow(n=4)  # old but stopped: not stuck
    services.workflow_stop(workflow_id=done.id)
    _age(done, created=now - dt.timedelta(hours=2), updated=now - dt.timedelta(hours=1))
    for workflow in (stuck, busy, fresh):
        assert Workflow.objects.get(pk=workflow.pk).status == Status.EXECUTING

    assert ids(reader.get(f"{BASE}/workflows/?stuck_for=600")) == [str(stuck.id)]
    assert ids(reader.get(f"{BASE}/workflows/?stuck_for=30")) == [str(busy.id), str(stuck.id)]
    assert ids(reader.get(f"{BASE}/workflows/?stuck_for=7200")) == []
    assert set(ids(reader.get(f"{BASE}/workflows/?stuck_for=0"))) == {
        str(stuck.id),
        str(busy.id),
        str(fresh.id),
    }
    assert ids(reader.get(f"{BASE}/workflows/?stuck_for=600&status=STOPPED")) == []
    assert ids(reader.get(f"{BASE}/workflows/?stuck_for=600&template={TEMPLATE}")) == [str(stuck.id)]
    for bad in ("-1", "1.5", "soon", str(10**12)):
        body = assert_error(reader.get(f"{BASE}/workflows/?stuck_for={bad}"), 400, "invalid")
        assert set(body["fields"]) == {"stuck_for"}


def test_stuck_counts_a_workflow_without_history_by_its_own_last_write(reader: APIClient) -> None:
    workflow = new_workflow(n=1)
    _age(workflow, created=timezone.now() - dt.timedelta(hours=1))
    HistoryRecord.objects.filter(workflow_id=workflow.pk).delete()

    assert ids(reader.get(f"{BASE}/workflows/?stuck_for=60")) == [str(workflow.id)]


def test_every_filter_together_still_takes_two_queries(
    reader: APIClient, django_assert_max_num_queries: Any
) -> None:
    workflow = new_workflow(order_id="k-1")
    _age(workflow, created=timezone.now() - dt.timedelta(hours=1))
    assert reader.get(f"{BASE}/templates/").status_code == 200  # loads the user's permissions
    after = quote((timezone.now() - dt.timedelta(days=1)).isoformat())
    query = (
        f"status=EXECUTING&template={TEMPLATE}&version=1&key=k-1&id={workflow.id}"
        f"&created_after={after}&stuck_for=60"
    )

    with django_assert_max_num_queries(2):
        found = ids(reader.get(f"{BASE}/workflows/?{query}"))
    assert found == [str(workflow.id)]


@pytest.mark.parametrize("role", ROLES)
def test_filtered_lists_need_the_view_permission(
    django_user_model: Any, running: Workflow, role: str
) -> None:
    response = client_for(django_user_model, role).get(f"{BASE}/workflows/?stuck_for=0&id={running.id}")

    if role in READERS:
        assert ids(response) == [str(running.id)]
    else:
        assert_refused(response, role, secrets=(SECRET, str(running.id)))
