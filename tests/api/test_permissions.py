"""Who may do what through the API: every endpoint with every role (docs/api.md#permissions).

Roles: anonymous; ``nobody`` (logged in, no dagger permission); ``reader`` (``view_workflow``);
``operator`` (``view_workflow``, ``operate_workflow`` and ``post_event``). Those not allowed get
401/403 in the API's error shape, no workflow data, and change nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dagger_django import Dagger
from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.models import InboxMessage, Status, Workflow
from tests.api.test_api import BASE, TEMPLATE, assert_error, new_workflow
from tests.engine import builders as b

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "nobody", "reader", "operator")
READERS = {"reader", "operator"}
OPERATORS = {"operator"}
#: A value only a workflow's own data holds: it must never appear in an answer to a refused role.
SECRET = "secret-value-7c1d"
EVENTS_TEMPLATE = "PermissionsEvents"


def grant(user: Any, *codenames: str) -> Any:
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="dagger_django", codename__in=codenames)
    )
    return user


def make_user(django_user_model: Any, role: str) -> Any:
    user = django_user_model.objects.create_user(username=f"{role}-{uuid.uuid4().hex[:6]}", password="pw")
    return grant(user, *ROLE_PERMISSIONS[role])


ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "anonymous": (),
    "nobody": (),
    "reader": ("view_workflow",),
    "operator": ("view_workflow", "operate_workflow", "post_event"),
}


def client_for(django_user_model: Any, role: str) -> APIClient:
    client = APIClient()
    if role != "anonymous":
        client.force_authenticate(make_user(django_user_model, role))
    return client


@pytest.fixture
def events_template() -> Iterator[Any]:
    """A listener waiting on topic "orders", so that ``POST events/`` has a known topic."""
    tmpl = b.template(EVENTS_TEMPLATE, b.process("main", b.listener("wait")))
    Dagger.template_dags[EVENTS_TEMPLATE] = tmpl
    yield tmpl
    Dagger.template_dags.pop(EVENTS_TEMPLATE, None)


@pytest.fixture
def running(dispatcher: InMemoryDispatcher) -> Workflow:
    """EXECUTING (its first task submitted, never run: the dispatcher is not drained)."""
    return new_workflow(order_id=SECRET)


@pytest.fixture
def failed(dispatcher: InMemoryDispatcher, django_capture_on_commit_callbacks: Any) -> Workflow:
    with django_capture_on_commit_callbacks(execute=True):
        workflow = new_workflow(fail=True, note=SECRET)
    with django_capture_on_commit_callbacks(execute=True):
        dispatcher.drain()
    workflow.refresh_from_db()
    assert workflow.status == Status.FAILURE
    return workflow


def assert_refused(response: Any, role: str, *, secrets: tuple[str, ...] = (SECRET,)) -> None:
    if role == "anonymous":
        assert response.status_code in (401, 403), response.content
        assert_error(response, response.status_code, "not_authenticated")
    else:
        assert_error(response, 403, "permission_denied")
    for secret in secrets:
        assert secret.encode() not in response.content


# --------------------------------------------------------------------------------------------------
# reading: view_workflow
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_workflow_list_needs_the_view_permission(
    django_user_model: Any, running: Workflow, role: str
) -> None:
    response = client_for(django_user_model, role).get(f"{BASE}/workflows/")
    if role in READERS:
        assert response.status_code == 200
        assert [row["id"] for row in response.json()["results"]] == [str(running.id)]
    else:
        assert_refused(response, role, secrets=(SECRET, str(running.id)))


@pytest.mark.parametrize("role", ROLES)
def test_workflow_detail_needs_the_view_permission(
    django_user_model: Any, running: Workflow, role: str
) -> None:
    response = client_for(django_user_model, role).get(f"{BASE}/workflows/{running.id}/")
    if role in READERS:
        assert response.status_code == 200
        assert response.json()["runtime_parameters"] == {"order_id": SECRET}
    else:
        assert_refused(response, role)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path", ["/templates/", f"/templates/{TEMPLATE}/"])
def test_templates_need_the_view_permission(
    django_user_model: Any, dispatcher: InMemoryDispatcher, role: str, path: str
) -> None:
    response = client_for(django_user_model, role).get(f"{BASE}{path}")
    if role in READERS:
        assert response.status_code == 200
        assert TEMPLATE in response.content.decode()
    else:
        assert_refused(response, role, secrets=(TEMPLATE,))


# --------------------------------------------------------------------------------------------------
# acting: operate_workflow
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_creating_a_workflow_needs_the_operate_permission(
    django_user_model: Any, dispatcher: InMemoryDispatcher, role: str
) -> None:
    response = client_for(django_user_model, role).post(
        f"{BASE}/workflows/", {"template": TEMPLATE, "runtime_parameters": {"note": SECRET}}, format="json"
    )
    if role in OPERATORS:
        assert response.status_code == 201, response.content
        assert Workflow.objects.count() == 1
    else:
        assert_refused(response, role)
        assert Workflow.objects.count() == 0


@pytest.mark.parametrize("role", ROLES)
def test_stopping_a_workflow_needs_the_operate_permission(
    django_user_model: Any, running: Workflow, role: str
) -> None:
    response = client_for(django_user_model, role).post(f"{BASE}/workflows/{running.id}/stop/")
    running.refresh_from_db()
    if role in OPERATORS:
        assert response.status_code == 200, response.content
        assert running.status == Status.STOPPED
    else:
        assert_refused(response, role)
        assert running.status == Status.EXECUTING


@pytest.mark.parametrize("role", ROLES)
def test_retrying_a_workflow_needs_the_operate_permission(
    django_user_model: Any, failed: Workflow, role: str
) -> None:
    response = client_for(django_user_model, role).post(f"{BASE}/workflows/{failed.id}/retry/")
    failed.refresh_from_db()
    if role in OPERATORS:
        assert response.status_code == 200, response.content
        assert failed.status == Status.EXECUTING
    else:
        assert_refused(response, role)
        assert failed.status == Status.FAILURE


@pytest.mark.parametrize("role", ROLES)
def test_editing_runtime_parameters_needs_the_operate_permission(
    django_user_model: Any, running: Workflow, role: str
) -> None:
    response = client_for(django_user_model, role).patch(
        f"{BASE}/workflows/{running.id}/runtime-parameters/", {"extra": 1}, format="json"
    )
    running.refresh_from_db()
    if role in OPERATORS:
        assert response.status_code == 200, response.content
        assert running.runtime_parameters == {"order_id": SECRET, "extra": 1}
    else:
        assert_refused(response, role)
        assert running.runtime_parameters == {"order_id": SECRET}


def test_operate_without_view_is_refused_because_every_action_answers_with_the_workflow(
    django_user_model: Any, running: Workflow
) -> None:
    client = APIClient()
    client.force_authenticate(grant(make_user(django_user_model, "nobody"), "operate_workflow"))

    assert_refused(client.post(f"{BASE}/workflows/{running.id}/stop/"), "nobody")
    running.refresh_from_db()
    assert running.status == Status.EXECUTING


# --------------------------------------------------------------------------------------------------
# events: post_event
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_posting_an_event_needs_the_post_event_permission(
    django_user_model: Any, dispatcher: InMemoryDispatcher, events_template: Any, role: str
) -> None:
    response = client_for(django_user_model, role).post(
        f"{BASE}/events/", {"topic": "orders", "payload": {"order_id": SECRET}}, format="json"
    )
    if role in OPERATORS:
        assert response.status_code == 202, response.content
        assert InboxMessage.objects.count() == 1
    else:
        assert_refused(response, role)
        assert InboxMessage.objects.count() == 0


def test_post_event_alone_posts_events_but_reads_and_operates_nothing(
    django_user_model: Any, running: Workflow, events_template: Any
) -> None:
    client = APIClient()
    client.force_authenticate(grant(make_user(django_user_model, "nobody"), "post_event"))

    ok = client.post(f"{BASE}/events/", {"topic": "orders", "payload": {"order_id": "x"}}, format="json")
    assert ok.status_code == 202, ok.content
    assert_refused(client.get(f"{BASE}/workflows/{running.id}/"), "nobody")
    assert_refused(client.post(f"{BASE}/workflows/{running.id}/stop/"), "nobody")


def test_operate_without_post_event_cannot_post_events(
    django_user_model: Any, dispatcher: InMemoryDispatcher, events_template: Any
) -> None:
    client = APIClient()
    client.force_authenticate(
        grant(make_user(django_user_model, "nobody"), "view_workflow", "operate_workflow")
    )

    response = client.post(
        f"{BASE}/events/", {"topic": "orders", "payload": {"order_id": "x"}}, format="json"
    )

    assert_refused(response, "nobody")
    assert InboxMessage.objects.count() == 0


# --------------------------------------------------------------------------------------------------
# health: open to all, no data
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_health_is_open_to_every_role_and_reveals_no_data(
    django_user_model: Any, running: Workflow, role: str
) -> None:
    response = client_for(django_user_model, role).get(f"{BASE}/health/")

    assert response.status_code in (200, 503)
    assert set(response.json()) == {"status", "checks"}
    assert SECRET.encode() not in response.content and str(running.id).encode() not in response.content


# --------------------------------------------------------------------------------------------------
# the project's defaults compose with dagger's permissions
# --------------------------------------------------------------------------------------------------
def test_a_project_allowing_anyone_still_gets_dagger_permissions(
    django_user_model: Any, running: Workflow
) -> None:
    rest = {"DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"]}
    with override_settings(REST_FRAMEWORK=rest):
        assert_refused(APIClient().post(f"{BASE}/workflows/{running.id}/stop/"), "anonymous")
        assert_refused(
            client_for(django_user_model, "reader").post(f"{BASE}/workflows/{running.id}/stop/"), "reader"
        )
    running.refresh_from_db()
    assert running.status == Status.EXECUTING


def test_a_stricter_project_default_is_kept_even_for_an_operator(
    django_user_model: Any, running: Workflow
) -> None:
    rest = {"DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"]}
    with override_settings(REST_FRAMEWORK=rest):
        response = client_for(django_user_model, "operator").post(f"{BASE}/workflows/{running.id}/stop/")
    assert_refused(response, "operator")
    running.refresh_from_db()
    assert running.status == Status.EXECUTING


# --------------------------------------------------------------------------------------------------
# authentication for machines: tokens
# --------------------------------------------------------------------------------------------------
def test_an_operator_token_creates_a_workflow_and_a_wrong_token_is_refused(
    django_user_model: Any, dispatcher: InMemoryDispatcher
) -> None:
    token = Token.objects.create(user=make_user(django_user_model, "operator"))
    client = APIClient()
    body = {"template": TEMPLATE, "runtime_parameters": {}}

    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.post(f"{BASE}/workflows/", body, format="json").status_code == 201

    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert_refused(client.post(f"{BASE}/workflows/", body, format="json"), "anonymous")
    assert Workflow.objects.count() == 1
