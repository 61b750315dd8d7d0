"""A workflow that ended leaves nothing in the correlation index (the real database, in-memory
dispatcher). Found by the state-machine campaign (tests/faults/test_state_machine.py, invariant
"subscriptions": no subscription for ended nodes or workflows)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dagger_django import DAGBuilderHelper, Dagger
from dagger_django.engine import messages, services
from dagger_django.models import Status, Subscription

from . import listener_tasks as lt
from .conftest import reload, statuses

S = Status
helper = DAGBuilderHelper(dagger_app=Dagger.app)


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    saved = dict(Dagger.template_dags)
    yield
    Dagger.template_dags.clear()
    Dagger.template_dags.update(saved)


def route(payload: dict[str, Any]) -> messages.Routed:
    (routed,) = messages.messages_route([messages.Incoming(topic="pizza_ready", payload=payload)])
    return routed


def test_listener_that_failed_under_continue_is_unsubscribed_when_the_workflow_completes(
    dispatcher: Any,
) -> None:
    wait = helper.generic_listener_task_builder(
        topic="pizza_ready", task_type=lt.Raises, process_name="order"
    )
    deliver = helper.generic_executor_task_builder(task_type=lt.Deliver, name="deliver")
    main = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks([wait, deliver])
    )
    root = helper.build_and_link_processes([main])
    tmpl = helper.generic_template(
        template_name="ContinueAfterListener", root_process=root, failure_policy="continue"
    )
    Dagger.template_dags[tmpl.name] = tmpl
    wf = tmpl.create_instance(submit_task=True, order_id="c-1")
    dispatcher.drain()
    assert Subscription.objects.filter(workflow_id=wf.id).count() == 1

    assert route({"order_id": "c-1"}).matched == 1  # on_message raises: the listener fails
    dispatcher.drain()
    s = statuses(wf.id)
    assert (s["order_listener_task"], s["deliver_executor_task"]) == (S.FAILURE, S.COMPLETED)
    assert reload(wf.id).status == S.COMPLETED  # the failure was ridden out ("continue")
    # The workflow cannot be retried: nothing of it stays in the index, nothing matches it.
    assert not Subscription.objects.filter(workflow_id=wf.id).exists()
    assert route({"order_id": "c-1"}).matched == 0


def test_listener_that_failed_is_unsubscribed_when_its_halted_workflow_is_stopped(dispatcher: Any) -> None:
    wait = helper.generic_listener_task_builder(
        topic="pizza_ready", task_type=lt.Raises, process_name="order"
    )
    main = helper.generic_process_builder(process_name="main", root_task=helper.build_and_link_tasks([wait]))
    tmpl = helper.generic_template(
        template_name="StopHalted", root_process=helper.build_and_link_processes([main])
    )
    Dagger.template_dags[tmpl.name] = tmpl
    wf = tmpl.create_instance(submit_task=True, order_id="h-1")
    dispatcher.drain()
    assert route({"order_id": "h-1"}).matched == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.FAILURE
    assert Subscription.objects.filter(workflow_id=wf.id).count() == 1  # a retry would wait again

    services.workflow_stop(workflow_id=wf.id)
    assert reload(wf.id).status == S.STOPPED
    assert not Subscription.objects.filter(workflow_id=wf.id).exists()
    assert route({"order_id": "h-1"}).matched == 0
