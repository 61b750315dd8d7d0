"""Campaign: the API, per role, under generated requests (issue 8; docs/api.md#permissions).

Every route of ``dagger_django/api/urls.py`` gets requests with generated methods, ids, query
strings, bodies and content types, from each role: anonymous, ``nobody`` (logged in, no dagger
permission), ``reader`` (``view_workflow``) and ``operator`` (``view_workflow``,
``operate_workflow``, ``post_event``). Whatever the request:

- no 5xx (health's 503 aside: a readiness answer, not an error of the request);
- every answer but HEAD's is JSON, and every error is in the API's shape
  ``{"error": <code>, "detail": <text>}``;
- a role not allowed gets 401/403 and no workflow data: no workflow id, no runtime parameter
  value, and for those without the view permission not even a template name.

Sizes come from :func:`tests.faults.scale.scale` (examples per role): short in ``make test``,
full with ``DAGGER_FAULTS=full``. Each request runs in a savepoint rolled back afterwards, so
every example meets the same workflows and one example's changes never hide another's leak.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from dagger_django import Dagger
from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.api.views import health_checks
from dagger_django.engine import ports
from dagger_django.models import Workflow
from tests.api.test_api import TEMPLATE, new_workflow
from tests.engine import builders as b
from tests.faults import record
from tests.faults.scale import scale

pytestmark = [pytest.mark.campaign, pytest.mark.django_db]

BASE = "/api/dagger"
EXAMPLES = scale(100, 1000)
SECRET = "campaign-secret-4e2a"
#: Figures of the roles run so far in this session (one record for the campaign).
ROLE_FIGURES: dict[str, Any] = {}
ROLE_STARTED: dict[str, float] = {}
EVENTS_TEMPLATE = "CampaignEvents"
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "anonymous": (),
    "nobody": (),
    "reader": ("view_workflow",),
    "operator": ("view_workflow", "operate_workflow", "post_event"),
}
METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
SAFE = {"GET", "HEAD", "OPTIONS"}


# --------------------------------------------------------------------------------------------------
# the routes and what each role may do there
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    pattern: str  # "{id}" / "{name}" are filled from generated values
    kind: str  # "read" (view perm, any method), "workflows" (read, or operate when unsafe),
    # "operate", "events", "health", "describe" (any dagger permission: the root, the schema, its pages)
    methods: tuple[str, ...]  # what the view serves: three requests in four use one of these


ROUTES = (
    Route("templates/", "read", ("GET",)),
    Route("templates/{name}/", "read", ("GET",)),
    Route("workflows/", "workflows", ("GET", "POST")),
    Route("workflows/{id}/", "workflows", ("GET",)),
    Route("workflows/{id}/stop/", "operate", ("POST",)),
    Route("workflows/{id}/retry/", "operate", ("POST",)),
    Route("workflows/{id}/runtime-parameters/", "operate", ("PATCH",)),
    Route("events/", "events", ("POST",)),
    Route("health/", "health", ("GET",)),
    Route("", "describe", ("GET",)),
    Route("workflows/{id}/history/", "read", ("GET",)),
    Route("schema/", "describe", ("GET",)),
    Route("docs/", "describe", ("GET",)),
    Route("docs/redoc/", "describe", ("GET",)),
    Route("workflows/{id}/resume/", "operate", ("POST",)),
    Route("workflows/{id}/nodes/{node_id}/skip/", "operate", ("POST",)),
    Route("workflows/{id}/nodes/{node_id}/complete/", "operate", ("POST",)),
    Route("workflows/{id}/timers/{timer_id}/fire/", "operate", ("POST",)),
    Route("messages/", "read", ("GET",)),
    Route("messages/{inbox_id}/replay/", "operate", ("POST",)),
)


def allowed(role: str, route: Route, method: str) -> bool:
    """Whether ``role`` passes the permission check (what follows may still be a 4xx)."""
    held = set(ROLE_PERMISSIONS[role])
    need = {
        "read": {"view_workflow"},
        "workflows": {"view_workflow"} if method in SAFE else {"view_workflow", "operate_workflow"},
        "operate": {"view_workflow", "operate_workflow"},
        "events": {"post_event"},
        "health": set(),
        "describe": set(),
    }[route.kind]
    if route.kind == "describe":
        return role != "anonymous" and bool(held)
    return route.kind == "health" or (role != "anonymous" and need <= held)


def may_see_templates(role: str) -> bool:
    return "view_workflow" in ROLE_PERMISSIONS[role]


# --------------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------------
#: Text of every kind, surrogates and NUL included (the JSON encoder escapes them).
hostile_text = st.text(st.characters(exclude_categories=()), max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4),
    max_leaves=12,
)
#: A path segment: never "/" (Django's resolver, not the API, answers paths it cannot route).
segments = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=40)


@dataclass
class Request:
    method: str
    route: Route
    path: str
    body: bytes = b""
    content_type: str = "application/json"
    description: dict[str, Any] = field(default_factory=dict)


def bodies(route: Route) -> st.SearchStrategy[bytes]:
    """Bodies shaped for ``route`` (to get past validation) mixed with anything at all."""
    shaped: st.SearchStrategy[Any]
    if route.pattern == "workflows/":
        shaped = st.fixed_dictionaries(
            {"template": st.sampled_from([TEMPLATE, EVENTS_TEMPLATE]) | hostile_text},
            optional={
                "runtime_parameters": st.dictionaries(hostile_text, json_values, max_size=4) | json_values,
                "id": st.uuids().map(str) | hostile_text,
                "partition_key_lookup": hostile_text,
            },
        )
    elif route.kind == "events":
        shaped = st.fixed_dictionaries(
            {"topic": st.just("orders") | hostile_text, "payload": json_values},
            optional={"message_id": hostile_text | st.integers()},
        )
    elif route.pattern.endswith("runtime-parameters/"):
        shaped = st.dictionaries(hostile_text, json_values, max_size=4)
    elif route.kind == "operate":  # an operator's action: an optional reason
        shaped = st.fixed_dictionaries({}, optional={"reason": hostile_text | json_values})
    else:
        shaped = json_values
    # Raw UTF-8 (lone surrogates become invalid bytes) and ASCII with escapes (they reach the
    # code as a str that no database driver can encode).
    as_json = shaped.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    escaped = shaped.map(lambda v: json.dumps(v, ensure_ascii=True).encode("ascii"))
    return as_json | escaped | st.binary(max_size=200) | st.just(b"") | st.just(b"[" * 5000)


@st.composite
def requests(draw: st.DrawFn, workflow_ids: list[str]) -> Request:
    route = draw(st.sampled_from(ROUTES))
    method = draw(st.sampled_from(route.methods) if draw(st.integers(0, 3)) else st.sampled_from(METHODS))
    workflow_id = draw(st.sampled_from(workflow_ids) | st.uuids().map(str) | segments)
    name = draw(st.sampled_from([TEMPLATE, EVENTS_TEMPLATE]) | segments)
    path = route.pattern.replace("{id}", quote(workflow_id, safe="")).replace("{name}", quote(name, safe=""))
    for placeholder in ("{node_id}", "{timer_id}", "{inbox_id}"):
        if placeholder in path:
            value = draw(st.uuids().map(str) | st.integers(-5, 2**70).map(str) | segments)
            path = path.replace(placeholder, quote(value, safe=""))
    query = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "status",
                    "template",
                    "key",
                    "limit",
                    "offset",
                    "version",
                    "id",
                    "created_after",
                    "created_before",
                    "stuck_for",
                ]
            )
            | segments,
            st.sampled_from(
                ["COMPLETED", "EXECUTING", TEMPLATE, SECRET, "0", "-1", "10", "2026-01-01T00:00:00Z"]
            )
            | segments,
            max_size=3,
        )
    )
    url = f"{BASE}/{path}" + (f"?{urlencode(query)}" if query else "")
    body = draw(bodies(route)) if method not in ("GET", "HEAD") else b""
    content_type = draw(
        st.just("application/json")
        | st.sampled_from(
            [
                "application/json; charset=utf-8",
                "multipart/form-data; boundary=x",
                "text/plain",
                "application/x-www-form-urlencoded",
            ]
        )
    )
    return Request(method, route, url, body, content_type, {"query": query, "id": workflow_id})


# --------------------------------------------------------------------------------------------------
# the world every example meets
# --------------------------------------------------------------------------------------------------
@dataclass
class World:
    workflow_ids: list[str]
    clients: dict[str, APIClient]


@pytest.fixture
def world(django_user_model: Any, django_capture_on_commit_callbacks: Any) -> Iterator[World]:
    dispatcher = InMemoryDispatcher()
    previous = ports.set_dispatcher(dispatcher)
    tmpl = b.template(EVENTS_TEMPLATE, b.process("main", b.listener("wait")))
    Dagger.template_dags[EVENTS_TEMPLATE] = tmpl
    try:
        running = new_workflow(order_id=SECRET)
        with django_capture_on_commit_callbacks(execute=True):
            failed = new_workflow(fail=True, note=SECRET)
        with django_capture_on_commit_callbacks(execute=True):
            dispatcher.drain()
        clients: dict[str, APIClient] = {}
        for role, codenames in ROLE_PERMISSIONS.items():
            client = APIClient()
            if role != "anonymous":
                user = django_user_model.objects.create_user(username=f"campaign-{role}", password="pw")
                user.user_permissions.add(
                    *Permission.objects.filter(
                        content_type__app_label="dagger_django", codename__in=codenames
                    )
                )
                client.force_authenticate(user)
            clients[role] = client
        yield World([str(running.id), str(failed.id)], clients)
    finally:
        Dagger.template_dags.pop(EVENTS_TEMPLATE, None)
        ports.set_dispatcher(previous)


def send(client: APIClient, request: Request) -> Any:
    """The request in a savepoint rolled back afterwards: every example sees the same rows."""
    cache.clear()  # throttle counts: the campaign is about answers, not rates
    health_checks.clear()
    with transaction.atomic():
        response = client.generic(
            request.method, request.path, request.body, content_type=request.content_type
        )
        transaction.set_rollback(True)
    return response


def check(role: str, request: Request, response: Any, world: World) -> None:
    status = response.status_code
    where = f"{role} {request.method} {request.path} body={request.body[:200]!r} -> {status}"
    readiness = request.route.kind == "health" and request.method in ("GET", "HEAD")
    if readiness:
        assert status in (200, 503), where
    else:
        assert status < 500, where + f": {response.content[:500]!r}"
    # The schema (YAML, or JSON) and its pages (HTML) answer in their own types; errors are JSON.
    described = request.route.kind == "describe" and request.route.pattern != "" and status < 400
    if request.method != "HEAD" and not described:
        assert response["Content-Type"].startswith("application/json"), where
        body = json.loads(response.content)
        if status >= 400 and not readiness:
            assert isinstance(body, dict) and isinstance(body.get("error"), str), where
            assert isinstance(body.get("detail"), str) and body["detail"], where

    if not allowed(role, request.route, request.method):
        assert status in (401, 403), where
        if request.method != "HEAD":
            code = "not_authenticated" if role == "anonymous" else "permission_denied"
            assert json.loads(response.content)["error"] == code, where
        leaked = [s for s in (SECRET, *world.workflow_ids) if s.encode() in response.content]
        if not may_see_templates(role):
            leaked += [n for n in (TEMPLATE, EVENTS_TEMPLATE) if n.encode() in response.content]
        assert not leaked, f"{where}: leaked {leaked}"
    if request.route.kind == "health":
        content = response.content
        assert SECRET.encode() not in content and not any(i.encode() in content for i in world.workflow_ids)


@pytest.mark.parametrize("role", list(ROLE_PERMISSIONS))
def test_generated_requests_get_no_5xx_json_errors_and_no_data_for_roles_not_allowed(
    role: str, world: World
) -> None:
    client = world.clients[role]
    sent: list[int] = []
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(request=requests(world.workflow_ids))
    def property_holds(request: Request) -> None:
        response = send(client, request)
        sent.append(response.status_code)
        check(role, request, response, world)

    property_holds()
    # Every example ran against the same two workflows: none was left changed.
    assert Workflow.objects.count() == 2
    print(f"\n{role}: {len(sent)} requests, statuses {dict(sorted(_count(sent).items()))}")
    # Only reached when every request of this role held (no 5xx, JSON errors, no data leaked).
    ROLE_FIGURES[f"{role} requests"] = len(sent)
    ROLE_FIGURES[f"{role} statuses"] = dict(sorted(_count(sent).items()))
    record.write(
        "api_roles",
        "API requests per role (property-based)",
        {**ROLE_FIGURES, "5xx": 0, "errors not JSON": 0, "data shown to a role not allowed": 0},
        started=ROLE_STARTED.setdefault("at", started),
    )


def _count(values: list[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# A finding of this campaign's first run (issue 8 item 1): lone surrogates sent as raw bytes are
# invalid UTF-8 (a 400), but escaped as "\ud800" they decode to a str the database driver cannot
# encode, and POST events/ answered 500.
def test_an_escaped_lone_surrogate_in_an_event_key_is_a_json_400_not_a_500(world: World) -> None:
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(world.clients["operator"].handler._force_user)
    body = b'{"topic": "orders", "payload": {"order_id": "\\ud800"}}'

    response = send(client, Request("POST", ROUTES[7], f"{BASE}/events/", body))

    assert response.status_code == 400, response.content[:300]
