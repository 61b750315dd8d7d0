"""Campaign: the API, per role, under requests generated from its OpenAPI schema (issue 8).

The companion of :mod:`tests.faults.test_api_roles`: there, hypothesis strategies written by
hand reach every route with any method, body and content type; here, schemathesis reads the
description the API serves (``GET schema/?format=json``, :mod:`dagger_django.api.schema`) and
generates, for each operation it describes, requests that fit the schema (positive) and
requests that break it (negative), with real workflow ids and template names in the path half
of the time (random ids only ever meet a 404). Each role sends them: anonymous, ``nobody``
(logged in, no dagger permission), ``reader`` (``view_workflow``) and ``operator``
(``view_workflow``, ``operate_workflow``, ``post_event``). Whatever the request:

- no 5xx (health's 503 aside: a readiness answer the schema describes);
- every 2xx conforms to the schema: its status, content type and body (schemathesis's
  ``response_schema_conformance`` and ``content_type_conformance`` checks);
- every error is JSON in the API's shape ``{"error": <code>, "detail": <text>}``;
- a role not allowed gets 401/403 and no data: no workflow id, no runtime parameter value, no
  business key, and for those without the view permission not even a template name.

Sizes come from :func:`tests.faults.scale.scale` (examples per operation and role): short in
``make test``, full with ``DAGGER_FAULTS=full``. Requests go in-process through Django's test
client (the role's user forced, as in the hand-written campaign), each in a savepoint rolled
back afterwards, so every example meets the same workflows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import transaction
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from dagger_django import Dagger
from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.api.views import health_checks
from dagger_django.engine import ports, services
from dagger_django.models import Workflow
from tests.api.test_api import TEMPLATE, new_workflow
from tests.engine import builders as b
from tests.faults import record
from tests.faults.scale import scale
from tests.faults.test_api_roles import EVENTS_TEMPLATE, ROLE_PERMISSIONS, ROUTES, Route, allowed
from tests.helpers import stored_nodes

pytestmark = [pytest.mark.campaign, pytest.mark.django_db]

BASE = "/api/dagger"
SCHEMA_PATH = f"{BASE}/schema/?format=json"
#: Examples per operation and role: twice this many, positive and negative cases mixed.
EXAMPLES = scale(10, 100)
SECRET = "schema-campaign-secret-7c1d"
BUSINESS_KEY = "schema-campaign-key-93fb"
CHECKS = [content_type_conformance, response_schema_conformance]
#: Figures of the roles run so far in this session (one record for the campaign).
ROLE_FIGURES: dict[str, Any] = {}
ROLE_STARTED: dict[str, float] = {}
ROUTE_OF = {f"{BASE}/{route.pattern.replace('{id}', '{workflow_id}')}": route for route in ROUTES}


# --------------------------------------------------------------------------------------------------
# the world every example meets
# --------------------------------------------------------------------------------------------------
@dataclass
class World:
    workflow_ids: list[str]
    clients: dict[str, APIClient]
    #: The nodes of those workflows (the operator's skip and complete meet real ones half of the time).
    node_ids: list[str] = field(default_factory=list)

    def planted(self) -> list[str]:
        """What a role without the view permission must never see."""
        return [SECRET, BUSINESS_KEY, *self.workflow_ids]


@pytest.fixture
def world(django_user_model: Any, django_capture_on_commit_callbacks: Any, settings: Any) -> Iterator[World]:
    # Anonymous cases carry generated basic-auth credentials (the schema describes the scheme),
    # and each costs a password hash: a fast hasher keeps the campaign about answers, not PBKDF2.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    dispatcher = InMemoryDispatcher()
    previous = ports.set_dispatcher(dispatcher)
    Dagger.template_dags[EVENTS_TEMPLATE] = b.template(EVENTS_TEMPLATE, b.process("main", b.listener("wait")))
    try:
        # Several statuses: submitted (never run), completed, failed, and one waiting on an event.
        submitted = new_workflow(order_id=BUSINESS_KEY, note=SECRET)
        with django_capture_on_commit_callbacks(execute=True):
            completed = new_workflow(order_id=f"{BUSINESS_KEY}-done", note=SECRET)
            failed = new_workflow(fail=True, note=SECRET)
        with django_capture_on_commit_callbacks(execute=True):
            dispatcher.drain()
        with django_capture_on_commit_callbacks(execute=True):
            waiting = services.workflow_create(
                template=Dagger.get_template(EVENTS_TEMPLATE),
                partition_key_lookup=None,
                runtime_parameters={"order_id": BUSINESS_KEY, "token": SECRET},
                submit=True,
            )
        with django_capture_on_commit_callbacks(execute=True):
            dispatcher.drain()
        ids = [str(w.id) for w in (submitted, completed, failed, waiting)]
        statuses = set(Workflow.objects.filter(id__in=ids).values_list("status", flat=True))
        assert len(statuses) >= 3, statuses
        clients: dict[str, APIClient] = {}
        for role, codenames in ROLE_PERMISSIONS.items():
            client = APIClient()
            if role != "anonymous":
                user = django_user_model.objects.create_user(username=f"schema-{role}", password="pw")
                user.user_permissions.add(
                    *Permission.objects.filter(
                        content_type__app_label="dagger_django", codename__in=codenames
                    )
                )
                client.force_authenticate(user)
            clients[role] = client
        nodes = [str(n) for n in stored_nodes.filter(workflow_id__in=ids).values_list("id", flat=True)]
        yield World(ids, clients, nodes)
    finally:
        Dagger.template_dags.pop(EVENTS_TEMPLATE, None)
        ports.set_dispatcher(previous)


def through(client: APIClient) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI application that hands the request to ``client`` (Django's test client, the role's
    user forced), in a savepoint rolled back afterwards: every example sees the same rows.

    Django's test client, not the WSGI handler itself: the handler's end-of-request signal closes
    the database connection, and with it the test's transaction."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        cache.clear()  # throttle counts: the campaign is about answers, not rates
        health_checks.clear()
        environ = {**environ, "HTTP_HOST": "testserver", "SERVER_NAME": "testserver"}
        with transaction.atomic():
            response = client.request(**environ)
            transaction.set_rollback(True)
        reason = HTTPStatus(response.status_code).phrase
        start_response(f"{response.status_code} {reason}", list(response.items()))
        return [response.content]

    return application


_SCHEMAS: dict[str, Any] = {}


def load_schema(world: World) -> Any:
    """The description the API serves, read through the app as the operator (it needs a dagger
    permission); loaded once per session (the schema does not change between tests)."""
    if "schema" not in _SCHEMAS:
        _SCHEMAS["schema"] = schemathesis.openapi.from_wsgi(SCHEMA_PATH, through(world.clients["operator"]))
    return _SCHEMAS["schema"]


# --------------------------------------------------------------------------------------------------
# the cases, with real ids half of the time
# --------------------------------------------------------------------------------------------------
def cases(operation: Any, world: World) -> st.SearchStrategy[Any]:
    """Positive and negative cases of ``operation``; half of the time each known id, template
    name, topic or business key it carries is replaced with one of the world's (random values
    only ever meet a 404 or an empty list)."""
    generated = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )
    templates = [TEMPLATE, EVENTS_TEMPLATE]
    known: dict[tuple[str, str], list[Any]] = {
        ("path_parameters", "workflow_id"): world.workflow_ids,
        ("path_parameters", "node_id"): world.node_ids,
        ("path_parameters", "name"): templates,
        ("query", "template"): templates,
        ("query", "key"): [BUSINESS_KEY],
        ("query", "id"): world.workflow_ids,
        ("body", "template"): templates,
        ("body", "topic"): ["orders"],
        ("body", "payload"): [{"order_id": BUSINESS_KEY}],
    }

    @st.composite
    def with_known_values(draw: st.DrawFn) -> Any:
        case = draw(generated)
        for (where, name), values in known.items():
            container = getattr(case, where)
            if isinstance(container, dict) and name in container and draw(st.booleans()):
                setattr(case, where, {**container, name: draw(st.sampled_from(values))})
        return case

    return with_known_values()


def run(role: str, operation: Any, world: World, statuses: dict[int, int]) -> None:
    """``EXAMPLES`` positive and negative cases of ``operation``, sent as ``role``."""
    route = ROUTE_OF[operation.path]
    app = through(world.clients[role])

    @hypothesis.settings(
        max_examples=EXAMPLES * 2,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(operation, world))
    def property_holds(case: Any) -> None:
        response = case.call(app=app)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        try:
            check(role, route, case, response, world)
        except FailureGroup as group:
            raise AssertionError(f"{role} {case.method} {response.request.url}: {group}") from group

    property_holds()


def api_error(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and isinstance(body.get("detail"), str)
        and bool(body["detail"])
    )


def check(role: str, route: Route, case: Any, response: Any, world: World) -> None:
    status = response.status_code
    sent = {k: v for k, v in (("headers", case.headers), ("cookies", case.cookies)) if v}
    if not isinstance(case.body, NotSet):
        sent["body"] = case.body
    where = f"{role} {case.method} {response.request.url} {sent!r:.300} -> {status}"
    if route.kind == "health" and case.method == "GET":
        assert status in (200, 503), where
    else:
        assert status < 500, f"{where}: {response.content[:500]!r}"
    # 2xx (and health's 503) as the schema describes them: content type and body
    case.validate_response(response, checks=CHECKS)
    if status >= 400 and case.method != "HEAD":
        assert (response.headers.get("content-type") or [""])[0].startswith("application/json"), where
        body = json.loads(response.content)
        if route.kind != "health":
            assert api_error(body), f"{where}: {response.content[:300]!r}"
    if not allowed(role, route, case.method):
        assert status in (401, 403), where
        if case.method != "HEAD":
            code = "not_authenticated" if role == "anonymous" else "permission_denied"
            assert json.loads(response.content)["error"] == code, where
    if "view_workflow" not in ROLE_PERMISSIONS[role]:
        hidden = world.planted() + [TEMPLATE, EVENTS_TEMPLATE]
        leaked = [s for s in hidden if s.encode() in response.content]
        assert not leaked, f"{where}: leaked {leaked}"


@pytest.mark.parametrize("role", list(ROLE_PERMISSIONS))
def test_requests_generated_from_the_schema_get_no_5xx_conforming_answers_and_no_data_for_roles_not_allowed(
    role: str, world: World
) -> None:
    schema = load_schema(world)
    statuses: dict[int, int] = {}
    operations = 0
    paths: set[str] = set()
    started = time.monotonic()

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        paths.add(operation.path)
        run(role, operation, world, statuses)

    # Every route is described but the schema and its pages (they are not API operations).
    assert paths == set(ROUTE_OF) - {f"{BASE}/schema/", f"{BASE}/docs/", f"{BASE}/docs/redoc/"}
    # Every example ran in a savepoint rolled back afterwards: no workflow was left behind.
    assert Workflow.objects.count() == len(world.workflow_ids)
    sent = sum(statuses.values())
    print(
        f"\n{role}: {sent} requests over {operations} operations, statuses {dict(sorted(statuses.items()))}"
    )
    ROLE_FIGURES[f"{role} requests"] = sent
    ROLE_FIGURES[f"{role} statuses"] = dict(sorted(statuses.items()))
    record.write(
        "api_schema",
        "API requests per role (generated from the OpenAPI schema)",
        {
            "operations": operations,
            **ROLE_FIGURES,
            "5xx": 0,
            "errors not JSON": 0,
            "schema violations": 0,
            "data shown to a role not allowed": 0,
        },
        started=ROLE_STARTED.setdefault("at", started),
    )
