"""Small helpers for tests that wait on other processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from dagger_django.engine.selectors import Event

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "the condition to hold",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Fails the test once ``timeout`` seconds have passed. ``message`` says what was awaited; give a
    callable to describe the state at the moment of failure (for example the current status).
    The predicate is always tried once more at the deadline, so a slow last poll is not lost.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:g}s waiting for {detail}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def history(workflow_id: Any, reason: str | None = None) -> list[Event]:
    """The history of a workflow, oldest first, or only its events of ``reason``.

    Read through ``engine.selectors.workflow_events``, the one reader of history, so tests do not
    depend on how history is stored.
    """
    from dagger_django.engine.selectors import workflow_events

    events = workflow_events(workflow_id=workflow_id)
    return events if reason is None else [e for e in events if e.reason == reason]


def browser_requests(browser: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The requests a Chromium started since the last call, ``{request id: url}``, and those
    that never left it, ``{request id: blocked reason}``. The driver must keep DevTools'
    network log (``goog:loggingPrefs`` ``{"performance": "ALL"}``); reading the log empties it."""
    import json

    started: dict[str, str] = {}
    blocked: dict[str, str] = {}
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            started[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked[params["requestId"]] = params["blockedReason"]
    return started, blocked


# -- metrics (docs/observability.md) ----------------------------------------------------------------
def scrape(client: Any) -> dict[str, Any]:
    """GET /metrics with ``client`` (allowed to read it): the metric families by name."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` (None when there is none)."""
    for family in families.values():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None
