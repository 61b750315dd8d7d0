"""What the demo starts and what it tells the person watching: ``manage.py dagger_demo`` starts
:data:`ORDERS`; ``make run`` prints one line per workflow as it settles (:func:`outcome_of`) and,
for the two that wait for an operator, the exact commands that move them on (:attr:`Outcome.steps`),
which ``make run --check`` then carries out itself.

Reads go through ``dagger_django.engine.selectors``, as every page's do.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from .workflows import TEMPLATE, TRANSFER_TOPIC

#: Seconds between starting the shipped order and its delivery (its trigger's timer).
DELIVERY_DELAY = 5.0
#: The first order number of a fresh database; later runs count on from the orders that exist.
FIRST_ORDER = 4711


@dataclass(frozen=True)
class DemoOrder:
    """One order the demo starts: what it shows, its runtime parameters (besides order_id and
    deliver_at), and in how many seconds it is delivered (None: at once, the default)."""

    shows: str
    parameters: dict[str, Any]
    deliver_in: float | None = None


ORDERS = (
    DemoOrder(
        "paid by card, shipped: a parallel group, then a timer", {"amount": 42.0}, deliver_in=DELIVERY_DELAY
    ),
    DemoOrder(
        "out of stock: the decision refunds instead of shipping", {"amount": 17.5, "out_of_stock": True}
    ),
    DemoOrder("card declined: fails, fix it and press Retry", {"amount": 99.0, "card_declined": True}),
    DemoOrder("bank transfer: waits for an event (a listener)", {"amount": 250.0, "payment": "transfer"}),
)


def order_parameters(order: DemoOrder, *, order_id: str, now: float | None = None) -> dict[str, Any]:
    """The runtime parameters ``create_instance`` gets for ``order``."""
    parameters = {"order_id": order_id, **order.parameters}
    if order.deliver_in is not None:
        parameters["deliver_at"] = (time.time() if now is None else now) + order.deliver_in
    return parameters


def first_free_order_number() -> int:
    """Order numbers go on from the demo orders already in the database (4711 on a fresh one),
    so that a listener event sent by order number reaches only this run's order."""
    from dagger_django.engine.selectors import workflow_list

    return FIRST_ORDER + workflow_list(template=TEMPLATE).count()


# --- what make run prints --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One operator action: ``patch`` runtime parameters, ``retry``, or post an ``event``. Shown
    as the API request (a curl command); ``make run --check`` makes that request, or calls the
    same service in-process when it has no login (:meth:`apply`)."""

    action: str
    body: dict[str, Any]
    workflow_id: Any = None
    say: str = ""

    @property
    def method(self) -> str:
        return "PATCH" if self.action == "patch" else "POST"

    @property
    def path(self) -> str:
        """Below /api/dagger/."""
        if self.action == "event":
            return "events/"
        return f"workflows/{self.workflow_id}/" + (
            "runtime-parameters/" if self.action == "patch" else "retry/"
        )

    def curl(self, base_url: str, credentials: str) -> str:
        words = ["curl", "-u", credentials, "-X", self.method]
        if self.body:
            words += ["-H", "Content-Type: application/json", "-d", json.dumps(self.body)]
        words.append(f"{base_url}/api/dagger/{self.path}")
        return " ".join(shlex.quote(word) for word in words)

    def apply(self, *, actor: str) -> None:
        """What the API does for this request, in-process."""
        from dagger_django.engine import messages, services

        if self.action == "patch":
            services.workflow_update_parameters(workflow_id=self.workflow_id, changes=self.body)
        elif self.action == "retry":
            services.workflow_retry(workflow_id=self.workflow_id, actor=actor)
        else:
            messages.message_receive(
                topic=self.body["topic"], payload=self.body["payload"], message_id=self.body.get("message_id")
            )


@dataclass(frozen=True)
class Outcome:
    """Where a workflow stands, for the person watching: ``state`` is COMPLETED, FAILURE,
    STOPPED, SKIPPED, WAITING (for an event, holding no worker) or RUNNING (not settled)."""

    workflow_id: Any
    label: str
    state: str
    detail: str = ""
    steps: list[Step] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return self.state != "RUNNING"

    def admin_url(self, base_url: str) -> str:
        return f"{base_url}/admin/dagger_django/workflow/{self.workflow_id}/change/"

    def line(self, base_url: str) -> str:
        """``order-4711 COMPLETED http://.../admin/dagger_django/workflow/<id>/change/``"""
        text = f"{self.label} {self.state} {self.admin_url(base_url)}"
        return f"{text}  ({self.detail})" if self.detail else text


def recent_workflows(*, created_after: dt.datetime, limit: int = 50) -> list[Any]:
    """Workflows created since ``created_after`` (oldest first), at most ``limit``."""
    from dagger_django.engine.selectors import workflow_list

    rows = list(workflow_list(created_after=created_after)[:limit])
    return list(reversed(rows))


def outcome_of(workflow: Any) -> Outcome:
    """The outcome of one workflow row from :func:`recent_workflows`."""
    from dagger_django.engine.selectors import workflow_detail_get

    label = workflow.business_key or str(workflow.id)
    status = workflow.status
    if status in {"COMPLETED", "STOPPED", "SKIPPED"}:
        return Outcome(workflow.id, label, status, _completed_detail(workflow, status))
    if status == "FAILURE":
        detail = workflow_detail_get(workflow_id=workflow.id)
        error = detail.error.strip().splitlines()[-1] if detail.error.strip() else ""
        return Outcome(workflow.id, label, status, error, _fix_steps(detail))
    if status == "EXECUTING":
        detail = workflow_detail_get(workflow_id=workflow.id)
        active = [t for t in detail.tasks if t.node_type == "LEAF" and t.status in {"SUBMITTED", "EXECUTING"}]
        # Settled while waiting: its only active tasks are listeners (a trigger's timer is not
        # a wait for the operator: it settles by itself).
        if active and all(t.kind == "listener" and t.status == "EXECUTING" for t in active):
            return Outcome(workflow.id, label, "WAITING", "for a bank transfer event", _event_steps(detail))
    return Outcome(workflow.id, label, "RUNNING")


def _completed_detail(workflow: Any, status: str) -> str:
    if status != "COMPLETED" or workflow.template_name != TEMPLATE:
        return ""
    from dagger_django.engine.selectors import workflow_detail_get

    parameters = workflow_detail_get(workflow_id=workflow.id).runtime_parameters
    if parameters.get("refunded") is not None:
        return f"refunded {parameters['refunded']}"
    if parameters.get("delivered"):
        return f"delivered, paid by {parameters.get('payment', 'card')}"
    return ""


def _fix_steps(detail: Any) -> list[Step]:
    """A demo order whose card was declined: clear the flag, then retry."""
    if detail.template_name != TEMPLATE or not detail.runtime_parameters.get("card_declined"):
        return [Step("retry", {}, detail.id, "after fixing the cause, retry:")]
    return [
        Step("patch", {"card_declined": False}, detail.id, "fix: clear the flag that makes the card fail:"),
        Step("retry", {}, detail.id, "then press Retry on its admin page, or:"),
    ]


def _event_steps(detail: Any) -> list[Step]:
    """A demo order waiting for the bank: the event its listener correlates on."""
    order_id = detail.runtime_parameters.get("order_id")
    if detail.template_name != TEMPLATE or order_id is None:
        return []
    payload = {"order_id": order_id, "reference": f"bank-{order_id}"}
    return [
        Step(
            "event",
            {"topic": TRANSFER_TOPIC, "payload": payload, "message_id": f"transfer-{order_id}"},
            detail.id,
            "send the bank's event (or, logged in to the admin, POST its JSON in the form at /api/dagger/events/):",
        )
    ]
