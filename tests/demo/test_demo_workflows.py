"""The demo project's order workflow (config/demo/workflows.py) and what ``make run`` says about it
(config/demo/guide.py): each demo order ends as its row in the guide promises, on the real engine.

The in-process tests run the engine with ``engine_under_test``; the e2e ones run the real Celery
worker and the API, as ``make run`` does: the declined card fixed and retried, the bank transfer
fed through ``POST events/``, the delivery fired by its timer.
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from config.demo import guide
from config.demo.workflows import TEMPLATE, TRANSFER_TOPIC
from dagger_django import Dagger
from dagger_django.engine.selectors import workflow_detail_get
from dagger_django.testing import engine_under_test
from tests.helpers import history, wait_for

BASE = "http://testserver"


def _create(order: guide.DemoOrder, order_id: str, **changes: Any) -> Any:
    parameters = {**guide.order_parameters(order, order_id=order_id), **changes}
    return Dagger.get_template(TEMPLATE).create_instance(
        partition_key_lookup="order_id", submit_task=True, **parameters
    )


def _statuses(workflow_id: Any) -> dict[str, str]:
    return {t.name.rsplit(".", 1)[-1]: t.status for t in workflow_detail_get(workflow_id=workflow_id).tasks}


def _outcome(workflow_id: Any) -> guide.Outcome:
    row = next(
        w
        for w in guide.recent_workflows(created_after=timezone.now() - dt.timedelta(hours=1))
        if w.id == workflow_id
    )
    return guide.outcome_of(row)


SHIPPED, REFUNDED, DECLINED, TRANSFER = guide.ORDERS


@pytest.mark.django_db(transaction=True)
def test_out_of_stock_order_is_refunded_and_never_delivered() -> None:
    with engine_under_test() as (dispatcher, _clock):
        wf = _create(REFUNDED, "order-1")
        dispatcher.drain()
    detail = workflow_detail_get(workflow_id=wf.id)
    assert detail.status == "COMPLETED"
    assert detail.runtime_parameters["refunded"] == 17.5
    assert "delivered" not in detail.runtime_parameters
    statuses = _statuses(wf.id)
    assert statuses["refund_executor_task"] == "COMPLETED"
    assert statuses["pack_and_notify"] == statuses["deliver"] == "SKIPPED"
    assert statuses["await_transfer_listener_task"] == "SKIPPED"
    assert _outcome(wf.id).line(BASE) == (
        f"order-1 COMPLETED {BASE}/admin/dagger_django/workflow/{wf.id}/change/  (refunded 17.5)"
    )


@pytest.mark.django_db(transaction=True)
def test_shipped_order_is_delivered_when_its_timer_is_due_and_never_refunded() -> None:
    with engine_under_test() as (dispatcher, clock):
        wf = _create(SHIPPED, "order-2", deliver_at=clock.now().timestamp() + guide.DELIVERY_DELAY)
        dispatcher.drain(fire_due_timers=False)
        assert _statuses(wf.id)["deliver"] == "EXECUTING"  # waiting for its time
        assert _outcome(wf.id).state == "RUNNING"  # a timer settles by itself: not the operator's
        clock.advance(seconds=guide.DELIVERY_DELAY)
        dispatcher.drain()
    detail = workflow_detail_get(workflow_id=wf.id)
    assert detail.status == "COMPLETED"
    assert detail.runtime_parameters["delivered"] is True
    assert detail.runtime_parameters["packed"] is detail.runtime_parameters["notified"] is True
    assert "refunded" not in detail.runtime_parameters
    assert _statuses(wf.id)["refund_executor_task"] == "SKIPPED"


@pytest.mark.django_db(transaction=True)
def test_dagger_demo_starts_one_order_of_each_kind_numbered_from_4711() -> None:
    with engine_under_test():  # created and submitted; nothing runs
        call_command("dagger_demo", stdout=io.StringIO())
        call_command("dagger_demo", stdout=io.StringIO())
    rows = guide.recent_workflows(created_after=timezone.now() - dt.timedelta(hours=1))
    assert [w.business_key for w in rows] == [f"order-{n}" for n in range(4711, 4719)]
    assert {w.template_name for w in rows} == {TEMPLATE}


# --- the real worker and the API, as make run has them ---------------------------------------------


@pytest.fixture
def operator(django_user_model: Any) -> APIClient:
    """An API client with the operate, post_event and view permissions (docs/api.md)."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("demo-operator", password="x")
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="dagger_django",
            codename__in=["view_workflow", "operate_workflow", "post_event"],
        )
    )
    client = APIClient()
    client.force_authenticate(user)
    return client


def _do(client: APIClient, step: guide.Step) -> Any:
    call = getattr(client, step.method.lower())
    response = call(f"/api/dagger/{step.path}", step.body, format="json")
    assert response.status_code in {200, 201, 202}, (step, response.status_code, response.content)
    return response


def _workflow_retries(workflow_id: Any) -> list[Any]:
    """The workflow's own ``retried`` events (its retried nodes have theirs too)."""
    return [e for e in history(workflow_id, "retried") if e.node_id is None]


def _status(workflow_id: Any) -> str:
    return workflow_detail_get(workflow_id=workflow_id).status


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_declined_card_fails_then_completes_after_the_fix_and_a_retry(
    celery_worker_process: Any, operator: APIClient
) -> None:
    wf = _create(DECLINED, "order-declined")
    wait_for(lambda: _status(wf.id) == "FAILURE", message=lambda: f"FAILURE, not {_status(wf.id)}")
    outcome = _outcome(wf.id)
    assert outcome.state == "FAILURE"
    assert "card declined for order-declined" in outcome.detail
    assert [(s.method, s.path) for s in outcome.steps] == [
        ("PATCH", f"workflows/{wf.id}/runtime-parameters/"),
        ("POST", f"workflows/{wf.id}/retry/"),
    ]
    assert "curl -u admin:admin -X PATCH" in outcome.steps[0].curl("http://127.0.0.1:8000", "admin:admin")

    for step in outcome.steps:  # what the README tells the operator, and --check does
        _do(operator, step)
    wait_for(lambda: _status(wf.id) == "COMPLETED", message=lambda: f"COMPLETED, not {_status(wf.id)}")
    detail = workflow_detail_get(workflow_id=wf.id)
    assert (
        detail.runtime_parameters["delivered"] is True and detail.runtime_parameters["card_declined"] is False
    )
    (retried,) = _workflow_retries(wf.id)
    assert retried.detail.get("actor") == "demo-operator"
    charge = [e for e in history(wf.id) if e.node_name.endswith("charge_card_executor_task")]
    assert [e.to_status for e in charge].count("FAILURE") == 1
    assert charge[-1].to_status == "COMPLETED"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_bank_transfer_waits_for_its_event_then_ships(
    celery_worker_process: Any, operator: APIClient
) -> None:
    wf = _create(TRANSFER, "order-transfer")
    other = _create(TRANSFER, "order-other")
    wait_for(lambda: _outcome(wf.id).state == "WAITING", message=lambda: f"WAITING, not {_outcome(wf.id)}")
    wait_for(lambda: _outcome(other.id).state == "WAITING", message="the other order to wait too")
    (step,) = _outcome(wf.id).steps
    assert step.body == {
        "topic": TRANSFER_TOPIC,
        "payload": {"order_id": "order-transfer", "reference": "bank-order-transfer"},
        "message_id": "transfer-order-transfer",
    }

    answer = _do(operator, step).json()
    assert answer["matched"] == 1 and answer["status"] == "routed"
    wait_for(lambda: _status(wf.id) == "COMPLETED", message=lambda: f"COMPLETED, not {_status(wf.id)}")
    detail = workflow_detail_get(workflow_id=wf.id)
    assert detail.runtime_parameters["payment_ref"] == "transfer-bank-order-transfer"
    assert detail.runtime_parameters["delivered"] is True
    assert _statuses(wf.id)["charge_card_executor_task"] == "SKIPPED"
    assert _outcome(other.id).state == "WAITING"  # another order's event only


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_delivery_waits_for_its_timer_on_the_real_worker(celery_worker_process: Any) -> None:
    deliver_at = timezone.now().timestamp() + 2.0
    wf = _create(SHIPPED, "order-timer", deliver_at=deliver_at)
    wait_for(lambda: _statuses(wf.id)["deliver"] == "EXECUTING", message="the delivery to wait for its time")
    wait_for(
        lambda: _status(wf.id) == "COMPLETED", timeout=30, message=lambda: f"COMPLETED, not {_status(wf.id)}"
    )
    deliver = next(t for t in workflow_detail_get(workflow_id=wf.id).tasks if t.name.endswith("deliver"))
    assert deliver.time_completed is not None and deliver.time_completed.timestamp() >= deliver_at
    assert _outcome(wf.id).state == "COMPLETED"


@pytest.mark.django_db(transaction=True)
def test_without_a_login_the_check_moves_the_waiting_orders_on_in_process() -> None:
    """``make run --check`` with DATABASE_URL set has no demo login: it calls the services the API
    would (``Step.apply``), with the same effect."""
    with engine_under_test() as (dispatcher, _clock):
        declined = _create(DECLINED, "order-in-process-1")
        transfer = _create(TRANSFER, "order-in-process-2")
        dispatcher.drain()
        for workflow_id, state in ((declined.id, "FAILURE"), (transfer.id, "WAITING")):
            outcome = _outcome(workflow_id)
            assert outcome.state == state
            for step in outcome.steps:
                step.apply(actor="make run --check")
            dispatcher.drain()
    assert _status(declined.id) == _status(transfer.id) == "COMPLETED"
    (retried,) = _workflow_retries(declined.id)
    assert retried.detail.get("actor") == "make run --check"


@pytest.mark.django_db(transaction=True)
def test_the_declined_order_is_fixed_and_retried_as_the_readme_says_with_the_admins_retry_button(
    browser: Any, live_server: Any, django_user_model: Any
) -> None:
    """README, "Fix and retry": PATCH the runtime parameters, then press Retry on the admin page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin")
    api = APIClient()
    api.login(username="admin", password="admin")
    with engine_under_test() as (dispatcher, _clock):
        wf = _create(DECLINED, "order-button")
        dispatcher.drain()
        patch, retry = _outcome(wf.id).steps
        assert retry.action == "retry"
        _do(api, patch)

        browser.get(f"{live_server.url}{_outcome(wf.id).admin_url('')}")
        browser.find_element(By.NAME, "username").send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys("admin")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "dagger-retry")).pop().click()
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "id_reason")).send_keys("card fixed")
        browser.find_element(By.ID, "dagger-confirm").click()
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".messagelist .success"))
        dispatcher.drain()

    assert _status(wf.id) == "COMPLETED"
    (retried,) = _workflow_retries(wf.id)
    assert retried.detail.get("actor") == "admin" and retried.detail.get("reason") == "card fixed"
