"""Authentication and throttling of the API (docs/api.md#authentication)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.api.test_api import BASE, assert_error

pytestmark = pytest.mark.django_db

#: The demo project's rates (config/settings.py).
LOGIN_FAILURES_ALLOWED = 10
ANON_REQUESTS_ALLOWED = 60


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def reader(django_user_model: Any) -> Any:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="reader", password="right-pw")
    user.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    return user


def test_after_too_many_wrong_passwords_an_address_gets_429_even_with_the_right_one(reader: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic("reader", "guess"))
    for _ in range(LOGIN_FAILURES_ALLOWED):
        wrong = client.get(f"{BASE}/workflows/")
        assert_error(wrong, wrong.status_code, "not_authenticated")
        assert wrong.status_code in (401, 403)

    assert_error(client.get(f"{BASE}/workflows/"), 429, "throttled")
    client.credentials(HTTP_AUTHORIZATION=basic("reader", "right-pw"))
    refused = client.get(f"{BASE}/workflows/")
    assert_error(refused, 429, "throttled")
    assert int(refused["Retry-After"]) > 0


def test_right_passwords_are_never_counted_as_failures(reader: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic("reader", "right-pw"))

    for _ in range(LOGIN_FAILURES_ALLOWED + 2):
        assert client.get(f"{BASE}/templates/").status_code == 200


def test_a_user_over_the_user_rate_gets_a_json_429(reader: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rest_framework.throttling import UserRateThrottle

    # DRF copies the rates into the class when it is imported: lower the demo's rate there.
    monkeypatch.setitem(UserRateThrottle.THROTTLE_RATES, "user", "3/minute")
    client = APIClient()
    client.force_authenticate(reader)
    for _ in range(3):
        assert client.get(f"{BASE}/templates/").status_code == 200

    response = client.get(f"{BASE}/templates/")

    assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0


def test_health_is_not_throttled() -> None:
    client = APIClient()
    for _ in range(ANON_REQUESTS_ALLOWED + 5):
        assert client.get(f"{BASE}/health/").status_code in (200, 503)


# A finding of the schema campaign (tests/faults/test_api_schema.py): a NUL character in a
# credential made PostgreSQL refuse the lookup, and the API answered 400 invalid_data.
@pytest.mark.parametrize(
    ("where", "credential"),
    [
        ("session cookie", "abcdefgh\x00ijk"),
        ("token", "Token abc\x00def"),
        ("basic user name", basic("rea\x00der", "right-pw")),
    ],
)
@pytest.mark.parametrize("path", ["workflows/", "schema/"])
def test_a_credential_the_database_cannot_hold_is_a_wrong_credential(
    reader: Any, where: str, credential: str, path: str
) -> None:
    client = APIClient()
    if where == "session cookie":
        client.cookies["sessionid"] = credential
    else:
        client.credentials(HTTP_AUTHORIZATION=credential)

    response = client.get(f"{BASE}/{path}")

    assert_error(response, response.status_code, "not_authenticated")
    assert response.status_code in (401, 403)
    # The browsable API's page authenticates again to draw its forms: that was a 500.
    assert client.get(f"{BASE}/{path}", HTTP_ACCEPT="text/html").status_code in (401, 403, 406)


def test_a_basic_user_name_the_database_cannot_hold_counts_as_a_failed_login(reader: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic("rea\x00der", "guess"))
    for _ in range(LOGIN_FAILURES_ALLOWED):
        assert client.get(f"{BASE}/workflows/").status_code in (401, 403)

    assert_error(client.get(f"{BASE}/workflows/"), 429, "throttled")
