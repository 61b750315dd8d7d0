"""An operator moves a workflow on (engine/operations.py): resume a stopped workflow, skip or
complete a waiting or failed task, fire a timer now, edit runtime parameters, replay a message;
each recorded in the workflow's history with who did it and why."""

from __future__ import annotations

from typing import Any

import pytest

from dagger_django import Dagger
from dagger_django.engine import messages, operations, services
from dagger_django.exceptions import NodeDoesNotExist, TaskInvalidState, TimerDoesNotExist
from dagger_django.models import (
    Delivery,
    DeliveryStatus,
    InboxMessage,
    InboxStatus,
    Node,
    Status,
    StopHook,
    Subscription,
    Timer,
    TimerStatus,
)
from tests.helpers import stored_nodes

from ..helpers import history
from . import builders as b
from . import tasks as t
from .conftest import reload, statuses
from .test_timing import at, one_process, step, trigger

S = Status
OPERATOR = {"actor": "olga", "reason": "customer called"}
W = "wait_for_payment_listener_task"
SHIP = "ship_executor_task"


def node(workflow_id: Any, short_name: str) -> Node:
    return next(n for n in stored_nodes.filter(workflow_id=workflow_id) if n.name.endswith(f".{short_name}"))


def event(workflow_id: Any, reason: str) -> Any:
    """The one event of ``reason`` (the workflow's own, for "resumed", which its nodes share)."""
    found = history(workflow_id, reason)
    if reason == "resumed":
        found = [e for e in found if e.node_id is None]
    (one,) = found
    return one


@pytest.fixture
def waiting_template() -> Any:
    """main: wait_for_payment (a listener on "orders", keyed on order_id) -> ship."""
    name = "OperateWaiting"
    tmpl = b.template(
        name,
        b.process(
            "main", b.helper.build_and_link_tasks([_listener("wait_for_payment"), b.task(t.Record, "ship")])
        ),
    )
    Dagger.template_dags[name] = tmpl  # routing reads the registry
    yield tmpl
    Dagger.template_dags.pop(name, None)


def _listener(name: str) -> Any:
    return b.helper.generic_listener_task_builder(topic="orders", task_type=t.Waiter, process_name=name)


def waiting_workflow(tmpl: Any, dispatcher: Any, order_id: str = "o-1") -> Any:
    wf = tmpl.create_instance(partition_key_lookup="order_id", submit_task=True, order_id=order_id)
    dispatcher.drain()
    assert statuses(wf.id)[W] == S.EXECUTING
    return wf


# -- resume -------------------------------------------------------------------------------------------
def test_resume_makes_a_stopped_listener_wait_again_and_the_workflow_completes_on_its_message(
    dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting_workflow(waiting_template, dispatcher)
    services.workflow_stop(workflow_id=wf.id)
    dispatcher.drain()  # the listener's stop hook runs
    assert statuses(wf.id) == {"main": S.STOPPED, W: S.STOPPED, SHIP: S.STOPPED}
    assert not Subscription.objects.filter(workflow_id=wf.id).exists()

    operations.workflow_resume(workflow_id=wf.id, **OPERATOR)
    dispatcher.drain()

    assert reload(wf.id).status == S.EXECUTING and reload(wf.id).time_completed is None
    assert statuses(wf.id) == {"main": S.EXECUTING, W: S.EXECUTING, SHIP: S.NOT_STARTED}
    assert node(wf.id, W).stop_hook == StopHook.NONE
    assert event(wf.id, "resumed").detail == OPERATOR and event(wf.id, "resumed").node_id is None
    routed = messages.message_receive(topic="orders", payload={"order_id": "o-1"})
    assert routed.matched == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_resume_hands_a_task_stopped_before_its_worker_ran_it_to_a_worker_again(dispatcher: Any) -> None:
    wf = b.linear("OperateResumeTask", (t.Record, "a"), (t.Record, "b")).create_instance(submit_task=True)
    services.workflow_stop(workflow_id=wf.id)  # "a" is SUBMITTED: its message was never run
    dispatcher.drain()
    assert statuses(wf.id)["a_executor_task"] == S.STOPPED

    operations.workflow_resume(workflow_id=wf.id)
    assert statuses(wf.id) == {
        "main": S.EXECUTING,
        "a_executor_task": S.SUBMITTED,
        "b_executor_task": S.NOT_STARTED,
    }
    dispatcher.drain()

    assert reload(wf.id).status == S.COMPLETED
    assert reload(wf.id).runtime_parameters["trace"] == ["a_executor_task", "b_executor_task"]
    assert event(wf.id, "resumed").detail == {}


def test_resume_refuses_a_workflow_that_is_not_stopped_and_one_whose_stop_hooks_have_not_run(
    dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting_workflow(waiting_template, dispatcher)
    with pytest.raises(TaskInvalidState, match="Only a STOPPED workflow can be resumed"):
        operations.workflow_resume(workflow_id=wf.id)

    services.workflow_stop(workflow_id=wf.id)  # the hook's message is queued, not run
    assert node(wf.id, W).stop_hook == StopHook.PENDING
    with pytest.raises(
        TaskInvalidState, match="stop hooks of .*wait_for_payment_listener_task have not run yet"
    ):
        operations.workflow_resume(workflow_id=wf.id)
    assert reload(wf.id).status == S.STOPPED

    dispatcher.drain()
    operations.workflow_resume(workflow_id=wf.id)
    assert reload(wf.id).status == S.EXECUTING


def test_resume_of_a_trigger_waits_for_its_time_again(dispatcher: Any, clock: Any) -> None:
    wf = one_process("OperateResumeTrigger", trigger("remind"), step("after")).create_instance(
        submit_task=True, run_at=at(clock, 60)
    )
    dispatcher.drain()
    services.workflow_stop(workflow_id=wf.id)
    dispatcher.drain()
    assert Timer.objects.get(workflow_id=wf.id).status == TimerStatus.CANCELLED

    operations.workflow_resume(workflow_id=wf.id)
    dispatcher.drain()
    assert statuses(wf.id)["remind"] == S.EXECUTING
    pending = Timer.objects.get(workflow_id=wf.id, status=TimerStatus.PENDING)
    clock.advance(seconds=60)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert Timer.objects.get(pk=pending.pk).status == TimerStatus.FIRED


# -- skip and complete --------------------------------------------------------------------------------
def test_skip_of_a_waiting_listener_moves_the_workflow_on_and_closes_its_messages(
    dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting_workflow(waiting_template, dispatcher)
    listener = node(wf.id, W)
    # A delivery the listener has not taken yet (routed, its message not run).
    messages.message_receive(topic="orders", payload={"order_id": "o-1"})
    delivery = Delivery.objects.get(node_id=listener.id)
    assert delivery.status == DeliveryStatus.PENDING

    operations.node_skip(workflow_id=wf.id, node_id=listener.id, **OPERATOR)
    dispatcher.drain()

    assert statuses(wf.id) == {"main": S.COMPLETED, W: S.SKIPPED, SHIP: S.COMPLETED}
    assert reload(wf.id).status == S.COMPLETED
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.IGNORED
    assert Delivery.objects.get(pk=delivery.pk).outcome == "skipped_by_operator"
    assert not Subscription.objects.filter(node_id=listener.id).exists()
    skipped = event(wf.id, "skipped_by_operator")
    assert (skipped.node_id, skipped.from_status, skipped.to_status) == (listener.id, S.EXECUTING, S.SKIPPED)
    assert skipped.detail == OPERATOR


def test_complete_of_a_waiting_listener_runs_no_user_code_and_dispatches_the_next_step(
    dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting_workflow(waiting_template, dispatcher)
    listener = node(wf.id, W)

    operations.node_complete(workflow_id=wf.id, node_id=str(listener.id), actor="olga")
    assert statuses(wf.id)[SHIP] == S.SUBMITTED
    dispatcher.drain()

    assert reload(wf.id).status == S.COMPLETED
    assert statuses(wf.id)[W] == S.COMPLETED
    assert event(wf.id, "completed_by_operator").detail == {"actor": "olga"}
    assert not history(wf.id, "message_received")  # on_message never ran


@pytest.mark.parametrize("operation", ["complete", "skip"])
def test_a_failed_task_skipped_or_completed_reopens_the_workflow_and_it_goes_on(
    dispatcher: Any, operation: str
) -> None:
    wf = b.linear("OperateFailed" + operation, (t.Boom, "boom"), (t.Record, "after")).create_instance(
        submit_task=True
    )
    dispatcher.drain()
    assert reload(wf.id).status == S.FAILURE
    failed = node(wf.id, "boom_executor_task")

    getattr(operations, f"node_{operation}")(workflow_id=wf.id, node_id=failed.id, **OPERATOR)
    dispatcher.drain()

    wf_row = reload(wf.id)
    assert wf_row.status == S.COMPLETED and wf_row.error == ""
    done = S.COMPLETED if operation == "complete" else S.SKIPPED
    assert statuses(wf.id) == {
        "main": S.COMPLETED,
        "boom_executor_task": done,
        "after_executor_task": S.COMPLETED,
    }
    assert (
        event(wf.id, f"{'completed' if operation == 'complete' else 'skipped'}_by_operator").detail
        == OPERATOR
    )


def test_skip_and_complete_refuse_running_finished_and_container_nodes(dispatcher: Any) -> None:
    wf = b.linear("OperateRefuse", (t.Record, "a"), (t.Record, "b")).create_instance(submit_task=True)
    running = node(wf.id, "a_executor_task")  # SUBMITTED: its message is on its way
    with pytest.raises(TaskInvalidState, match="cannot be skipped: it is running"):
        operations.node_skip(workflow_id=wf.id, node_id=running.id)
    with pytest.raises(TaskInvalidState, match="it has not started"):
        operations.node_complete(workflow_id=wf.id, node_id=node(wf.id, "b_executor_task").id)
    with pytest.raises(TaskInvalidState, match="process or a parallel group"):
        operations.node_skip(workflow_id=wf.id, node_id=_process(wf.id).id)
    with pytest.raises(NodeDoesNotExist):
        operations.node_skip(workflow_id=wf.id, node_id="not-a-node")
    dispatcher.drain()
    with pytest.raises(TaskInvalidState, match="the workflow is COMPLETED"):
        operations.node_complete(workflow_id=wf.id, node_id=running.id)
    assert not history(wf.id, "skipped_by_operator") and not history(wf.id, "completed_by_operator")


def _process(workflow_id: Any) -> Node:
    return stored_nodes.get(workflow_id=workflow_id, kind="process")


def test_complete_of_a_trigger_waiting_for_its_time_cancels_its_timer(dispatcher: Any, clock: Any) -> None:
    wf = one_process("OperateCompleteTrigger", trigger("remind"), step("after")).create_instance(
        submit_task=True, run_at=at(clock, 3600)
    )
    dispatcher.drain()
    remind = node(wf.id, "remind")

    operations.node_complete(workflow_id=wf.id, node_id=remind.id, reason="sent by hand")
    dispatcher.drain()

    assert reload(wf.id).status == S.COMPLETED
    assert Timer.objects.get(workflow_id=wf.id).status == TimerStatus.CANCELLED
    assert "remind" not in reload(wf.id).runtime_parameters["trace"]  # its execute never ran
    assert event(wf.id, "completed_by_operator").detail == {"reason": "sent by hand"}


# -- timers ---------------------------------------------------------------------------------------------
def test_fire_now_runs_a_trigger_before_its_time_and_a_second_fire_is_refused(
    dispatcher: Any, clock: Any
) -> None:
    wf = one_process("OperateFireNow", trigger("remind"), step("after")).create_instance(
        submit_task=True, run_at=at(clock, 3600)
    )
    dispatcher.drain()
    timer = Timer.objects.get(workflow_id=wf.id)

    with pytest.raises(TimerDoesNotExist):
        operations.timer_fire_now(timer_id=timer.pk, workflow_id="0b1e4e3e-0000-4000-8000-000000000000")
    operations.timer_fire_now(timer_id=timer.pk, workflow_id=wf.id, **OPERATOR)
    dispatcher.drain()

    assert reload(wf.id).status == S.COMPLETED
    assert "remind" in reload(wf.id).runtime_parameters["trace"]
    assert Timer.objects.get(pk=timer.pk).status == TimerStatus.FIRED
    fired = event(wf.id, "timer_fired_by_operator")
    assert fired.node_id == node(wf.id, "remind").id
    assert fired.detail["timer"] == timer.pk and fired.detail["actor"] == "olga"
    with pytest.raises(TaskInvalidState):
        operations.timer_fire_now(timer_id=timer.pk)
    with pytest.raises(TimerDoesNotExist):
        operations.timer_fire_now(timer_id="x")
    assert len(history(wf.id, "timer_fired_by_operator")) == 1


# -- runtime parameters -----------------------------------------------------------------------------------
def test_a_parameter_edit_records_who_and_why_and_the_listener_then_matches_the_new_key(
    dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting_workflow(waiting_template, dispatcher, order_id="old-key")

    services.workflow_update_parameters(workflow_id=wf.id, changes={"order_id": "new-key"}, **OPERATOR)

    changed = event(wf.id, "parameters_changed")
    assert changed.detail == {"changed": ["order_id"], "removed": [], **OPERATOR}
    assert messages.message_receive(topic="orders", payload={"order_id": "old-key"}).matched == 0
    assert messages.message_receive(topic="orders", payload={"order_id": "new-key"}).matched == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert reload(wf.id).business_key == "new-key"


def test_parameters_of_a_stopped_workflow_can_be_fixed_before_it_is_resumed(
    dispatcher: Any, waiting_template: Any
) -> None:
    wf = waiting_workflow(waiting_template, dispatcher, order_id="wrong")
    services.workflow_stop(workflow_id=wf.id)
    dispatcher.drain()
    services.workflow_update_parameters(workflow_id=wf.id, changes={"order_id": "right"})
    operations.workflow_resume(workflow_id=wf.id)

    assert Subscription.objects.get(workflow_id=wf.id).key_value == "right"
    assert messages.message_receive(topic="orders", payload={"order_id": "right"}).matched == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


# -- messages -------------------------------------------------------------------------------------------
def test_replay_records_who_and_why_on_the_message_and_in_the_workflow_it_reaches(
    dispatcher: Any, waiting_template: Any
) -> None:
    early = messages.message_receive(topic="orders", payload={"order_id": "late-1"})
    assert early.status == InboxStatus.UNMATCHED
    wf = waiting_workflow(waiting_template, dispatcher, order_id="late-1")

    routed = operations.message_replay(inbox_id=early.inbox_id, **OPERATOR)
    dispatcher.drain()

    assert (routed.status, routed.matched) == (InboxStatus.ROUTED, 1)
    row = InboxMessage.objects.get(pk=early.inbox_id)
    assert (row.replayed_by, row.replay_reason) == ("olga", "customer called") and row.replayed_at
    replayed = event(wf.id, "message_replayed")
    assert replayed.node_id == node(wf.id, W).id
    assert replayed.detail == {"message": early.inbox_id, "topic": "orders", **OPERATOR}
    assert reload(wf.id).status == S.COMPLETED
