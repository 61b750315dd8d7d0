"""Hostile request bodies on the write endpoints: always a 400/413 JSON error, never a 500.

The same contents that must not stop the Kafka bridge (tests/kafka/test_poison.py): deep nesting
(DRF's parser itself raises RecursionError), lone surrogates, NUL in keys and values, huge bodies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from dagger_django import Dagger
from dagger_django.models import InboxMessage, Workflow
from dagger_django.testing import InMemoryDispatcher, engine_under_test

from ..kafka import workflows as w  # noqa: F401 - registers the listener templates
from .test_api import TEMPLATE

BASE = "/api/dagger"
pytestmark = pytest.mark.django_db


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (fake, _clock):
        yield fake


@pytest.fixture
def api(django_user_model: Any, dispatcher: InMemoryDispatcher) -> APIClient:
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_superuser("hostile", password="x"))
    return client


def nested(depth: int, inner: str = '"x"') -> str:
    return "[" * depth + inner + "]" * depth


#: JSON texts of a value a client could send (as text, so lone surrogates and NUL stay escapes).
HOSTILE_VALUES = {
    "nested_500_around_nul": nested(500, '"\\u0000"'),
    "nested_100000": nested(100_000),
    "lone_surrogate": '"\\ud800"',
    "surrogate_in_a_key": '{"\\udfff": 1}',
    "nul_in_a_value": '"a\\u0000b"',
    "nul_in_a_key": '{"a\\u0000b": 1}',
    "huge_number": "1" * 5000,
}


def workflows_body(value: str) -> str:
    return f'{{"template": "{TEMPLATE}", "runtime_parameters": {{"order_id": "o", "v": {value}}}}}'


def events_body(value: str) -> str:
    return f'{{"topic": "counted", "payload": {{"order_id": {value}, "n": {value}}}}}'


def parameters_body(value: str) -> str:
    return f'{{"v": {value}}}'


def new_workflow() -> str:
    instance = Dagger.get_template(TEMPLATE).create_instance(submit_task=False, order_id="o")
    return str(instance.id)


def send(api: APIClient, endpoint: str, body: str | bytes) -> Any:
    raw = body.encode("utf-8") if isinstance(body, str) else body
    if endpoint == "workflows":
        return api.generic("POST", f"{BASE}/workflows/", raw, content_type="application/json")
    if endpoint == "events":
        return api.generic("POST", f"{BASE}/events/", raw, content_type="application/json")
    url = f"{BASE}/workflows/{new_workflow()}/runtime-parameters/"
    return api.generic("PATCH", url, raw, content_type="application/json")


BODIES: dict[str, Callable[[str], str]] = {
    "workflows": workflows_body,
    "events": events_body,
    "parameters": parameters_body,
}


def assert_json_error(response: Any, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body


@pytest.mark.parametrize("endpoint", sorted(BODIES))
@pytest.mark.parametrize("case", sorted(HOSTILE_VALUES))
def test_a_hostile_body_is_a_json_400_and_stores_nothing(api: APIClient, endpoint: str, case: str) -> None:
    before = Workflow.objects.count() + (1 if endpoint == "parameters" else 0)
    response = send(api, endpoint, BODIES[endpoint](HOSTILE_VALUES[case]))
    assert_json_error(response, 400)
    assert Workflow.objects.count() == before
    assert not InboxMessage.objects.exists()


@pytest.mark.parametrize("endpoint", sorted(BODIES))
def test_a_body_over_the_upload_limit_is_a_json_413(api: APIClient, endpoint: str, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = send(api, endpoint, BODIES[endpoint]('"' + "x" * 20_000 + '"'))
    assert_json_error(response, 413)


@pytest.mark.parametrize("raw", [b"\xff\xfe{", b'{"a": "\\ud800', b"\x00", b"[" * 10, b"null"])
@pytest.mark.parametrize("endpoint", sorted(BODIES))
def test_a_body_that_is_not_a_json_object_is_a_json_400(api: APIClient, endpoint: str, raw: bytes) -> None:
    assert_json_error(send(api, endpoint, raw), 400)


def test_an_event_payload_that_cannot_be_stored_says_why(api: APIClient) -> None:
    response = send(api, "events", events_body('"\\ud800"'))
    body = assert_json_error(response, 400)
    assert body["error"] == "invalid_payload"
    assert "surrogate" in body["detail"]


def test_a_good_event_next_to_them_is_routed(api: APIClient) -> None:
    order = f"ok-{uuid.uuid4().hex[:6]}"
    send(api, "events", events_body('"\\ud800"'))
    response = send(api, "events", f'{{"topic": "counted", "payload": {{"order_id": "{order}"}}}}')
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "unmatched"


STRING_FIELDS = {
    "workflows.template": lambda v: f'{{"template": {v}, "runtime_parameters": {{}}}}',
    "workflows.id": lambda v: f'{{"template": "{TEMPLATE}", "id": {v}, "runtime_parameters": {{}}}}',
    "workflows.partition_key_lookup": lambda v: (
        f'{{"template": "{TEMPLATE}", "partition_key_lookup": {v}, "runtime_parameters": {{"order_id": 1}}}}'
    ),
    "workflows.unknown_field": lambda v: (
        f'{{"template": "{TEMPLATE}", "x": 1, {v}: 2}}'
        if v.startswith('"')
        else f'{{"template": "{TEMPLATE}", "runtim_parameters": {v}}}'
    ),
    "events.topic": lambda v: f'{{"topic": {v}, "payload": {{"order_id": "x"}}}}',
    "events.message_id": lambda v: (
        f'{{"topic": "counted", "message_id": {v}, "payload": {{"order_id": "x"}}}}'
    ),
}


@pytest.mark.parametrize("value", ['"\\ud800"', '"a\\u0000b"', nested(300)], ids=["surrogate", "nul", "deep"])
@pytest.mark.parametrize("where", sorted(STRING_FIELDS))
def test_a_hostile_string_field_is_a_json_4xx(api: APIClient, where: str, value: str) -> None:
    endpoint = where.split(".")[0]
    before = Workflow.objects.count()
    assert_json_error(send(api, endpoint, STRING_FIELDS[where](value)), 400, 404)
    assert Workflow.objects.count() == before
    assert not InboxMessage.objects.exists()
