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


class NodeQuery:
    """The nodes of workflows as committed, for tests: ``stored_nodes.filter(workflow_id=wf.id,
    kind="listener")``, ``stored_nodes.get(pk=...)``, ``.count()``, ``.exists()``, ``.values_list(...)``
    and ``.update(...)``, with the lookups tests use (exact, ``__in``, ``__endswith``,
    ``__startswith``, ``__contains``).

    Nodes are stored in their workflow's row (docs/internals.md, "Node state in the workflow
    row"), so this reads them through ``engine.state`` instead of a table; ``update`` writes them
    back in a transaction that locks each workflow, as the engine does.
    """

    def __init__(self, lookups: dict[str, Any] | None = None) -> None:
        self.lookups = dict(lookups or {})

    def filter(self, **lookups: Any) -> NodeQuery:
        return NodeQuery({**self.lookups, **lookups})

    def _workflow_ids(self) -> list[Any]:
        from dagger_django.models import Workflow

        if "workflow_id" in self.lookups:
            return [self.lookups["workflow_id"]]
        if "workflow_id__in" in self.lookups:
            return list(self.lookups["workflow_id__in"])
        return list(Workflow.objects.values_list("id", flat=True))

    @staticmethod
    def _match(node: Any, key: str, wanted: Any) -> bool:
        name, _, op = key.partition("__")
        value = node.id if name == "pk" else getattr(node, name)
        if op == "in":
            return value in wanted or str(value) in {str(w) for w in wanted}
        if op == "endswith":
            return str(value).endswith(wanted)
        if op == "startswith":
            return str(value).startswith(wanted)
        if op == "contains":
            return wanted in value
        if op:
            raise ValueError(f"lookup {key} is not supported")
        return value == wanted or str(value) == str(wanted)

    def all(self) -> list[Any]:
        from dagger_django.engine.state import nodes_read_many

        found = []
        for workflow_nodes in nodes_read_many(self._workflow_ids()).values():
            found.extend(
                n for n in workflow_nodes if all(self._match(n, k, v) for k, v in self.lookups.items())
            )
        return sorted(found, key=lambda n: (str(n.workflow_id), n.position))

    def __iter__(self) -> Any:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())

    def get(self, **lookups: Any) -> Any:
        found = self.filter(**lookups).all()
        if len(found) != 1:
            raise LookupError(f"{len(found)} nodes match {self.filter(**lookups).lookups}")
        return found[0]

    def count(self) -> int:
        return len(self.all())

    def exists(self) -> bool:
        return bool(self.all())

    def values_list(self, *fields: str, flat: bool = False) -> list[Any]:
        rows = [tuple(getattr(n, f) for f in fields) for n in self.all()]
        return [row[0] for row in rows] if flat else rows

    def update(self, **fields: Any) -> int:
        """Set ``fields`` on the matching nodes, each workflow in a transaction that locks it."""
        from django.db import transaction

        from dagger_django.engine.state import WorkflowState, load_locked

        by_workflow: dict[Any, set[Any]] = {}
        for n in self.all():
            by_workflow.setdefault(n.workflow_id, set()).add(n.id)
        for workflow_id, ids in by_workflow.items():
            with transaction.atomic():
                wf, loaded = load_locked(workflow_id)
                state = WorkflowState(wf, loaded)
                for n in loaded:
                    if n.id in ids:
                        for name, value in fields.items():
                            setattr(n, name, value)
                        state.mark(n)
                state.flush()
        return sum(len(ids) for ids in by_workflow.values())


#: The nodes of every workflow: ``stored_nodes.filter(workflow_id=wf.id)`` (see :class:`NodeQuery`).
stored_nodes = NodeQuery()
