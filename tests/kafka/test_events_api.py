"""``POST /api/dagger/events/``: the same routing as the bridge, over HTTP (no Kafka needed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from dagger_django import Dagger
from dagger_django.models import InboxMessage, InboxStatus, Status, Workflow
from dagger_django.testing import InMemoryDispatcher, engine_under_test

from . import workflows as w  # noqa: F401 - registers the templates

URL = "/api/dagger/events/"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (fake, _clock):
        yield fake


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    client = APIClient()
    user = django_user_model.objects.create_user("events", password="x")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="dagger_django", codename="post_event")
    )
    client.force_authenticate(user)
    return client


def waiting(dispatcher: InMemoryDispatcher, template: str = "KafkaCounted") -> tuple[str, Workflow]:
    order = f"http-{uuid.uuid4().hex[:8]}"
    instance = Dagger.get_template(template).create_instance(submit_task=True, order_id=order)
    dispatcher.drain()
    return order, Workflow.objects.get(pk=instance.id)


def test_an_event_is_routed_and_delivered(api: APIClient, dispatcher: InMemoryDispatcher) -> None:
    order, wf = waiting(dispatcher, "KafkaEarly")
    response = api.post(URL, {"topic": "early_a", "payload": {"order_id": order, "n": 1}}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["matched"], body["status"]) == (1, "routed")
    assert InboxMessage.objects.get(pk=body["message"]).source == "http"
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).runtime_parameters["seen"] == [1]


def test_a_retried_post_with_the_same_message_id_has_one_effect(
    api: APIClient, dispatcher: InMemoryDispatcher
) -> None:
    order, wf = waiting(dispatcher)
    event = {"topic": "counted", "payload": {"order_id": order, "n": 7}, "message_id": "abc-1"}
    first = api.post(URL, event, format="json").json()
    again = api.post(URL, event, format="json").json()
    assert first["status"] == "routed" and again == {
        "matched": 1,
        "status": "duplicate",
        "message": first["message"],
    }
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).runtime_parameters["seen"] == [7]


def test_an_unknown_topic_is_a_404(api: APIClient) -> None:
    response = api.post(URL, {"topic": "nobody_listens", "payload": {}}, format="json")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_topic"
    assert not InboxMessage.objects.exists()


def test_an_oversized_payload_is_a_413(api: APIClient, settings: Any) -> None:
    settings.DAGGER = {"MAX_MESSAGE_BYTES": 1000}
    response = api.post(URL, {"topic": "counted", "payload": {"order_id": "x" * 2000}}, format="json")
    assert response.status_code == 413
    assert response.json()["error"] == "message_too_large"


def test_a_payload_without_a_key_is_recorded_as_a_dead_letter(api: APIClient) -> None:
    response = api.post(URL, {"topic": "bad_ready", "payload": {"nothing": 1}}, format="json")
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["reason"], body["matched"]) == (InboxStatus.INVALID, "no_key", 0)
    assert InboxMessage.objects.get(pk=body["message"]).status == InboxStatus.INVALID


def test_a_malformed_request_is_a_400(api: APIClient) -> None:
    assert api.post(URL, {"payload": {}}, format="json").json()["error"] == "invalid"
    assert api.post(URL, "{not json", content_type="application/json").status_code == 400


def test_events_need_authentication() -> None:
    assert APIClient().post(URL, {"topic": "counted", "payload": {}}, format="json").status_code in (401, 403)


def test_completes_a_waiting_workflow_over_http(api: APIClient, dispatcher: InMemoryDispatcher) -> None:
    order, wf = waiting(dispatcher, "KafkaReprocess")
    api.post(URL, {"topic": "reprocess_ready", "payload": {"order_id": order}}, format="json")
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == Status.COMPLETED
