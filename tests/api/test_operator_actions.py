"""An operator moves a workflow on through the API (docs/api.md#operating): resume, skip and
complete a task, fire a timer now, edit runtime parameters with a reason, list dead letters and
replay a message; each with every role (anonymous, ``nobody``, ``reader``, ``operator``), each
recorded in the workflow's history with the user's name and the reason."""

from __future__ import annotations

from typing import Any

import pytest

from dagger_django import Dagger
from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.engine import messages, ports, selectors, services
from dagger_django.models import InboxMessage, InboxStatus, Node, Status, Timer, Workflow
from tests.api.test_api import BASE, assert_error
from tests.api.test_permissions import OPERATORS, READERS, ROLES, SECRET, assert_refused, client_for
from tests.engine import builders as b
from tests.engine import tasks as t
from tests.helpers import stored_nodes

pytestmark = pytest.mark.django_db
S = Status
WAITING = "ApiOperatorWaiting"


@pytest.fixture
def settle(dispatcher: InMemoryDispatcher, django_capture_on_commit_callbacks: Any) -> Any:
    """Run what the engine handed to workers, until nothing is left (commits are savepoints
    here: their on-commit sends run when each capture ends)."""

    def run() -> None:
        for _ in range(50):
            with django_capture_on_commit_callbacks(execute=True):
                if not dispatcher.drain():
                    return
        raise AssertionError("work keeps coming")

    return run


@pytest.fixture
def waiting(dispatcher: InMemoryDispatcher, django_capture_on_commit_callbacks: Any, settle: Any) -> Workflow:
    """EXECUTING: a listener on "orders" waits for order_id=SECRET, a task follows it."""
    tmpl = b.template(
        WAITING,
        b.process(
            "main",
            b.helper.build_and_link_tasks(
                [
                    b.helper.generic_listener_task_builder(
                        topic="orders", task_type=t.Waiter, process_name="wait_for_payment"
                    ),
                    b.task(t.Record, "ship"),
                ]
            ),
        ),
    )
    Dagger.template_dags[WAITING] = tmpl
    with django_capture_on_commit_callbacks(execute=True):
        wf = tmpl.create_instance(partition_key_lookup="order_id", submit_task=True, order_id=SECRET)
    settle()
    yield Workflow.objects.get(pk=wf.id)
    Dagger.template_dags.pop(WAITING, None)


@pytest.fixture
def stopped(waiting: Workflow, django_capture_on_commit_callbacks: Any, settle: Any) -> Workflow:
    with django_capture_on_commit_callbacks(execute=True):
        services.workflow_stop(workflow_id=waiting.id)
    settle()  # the stop hook runs
    return Workflow.objects.get(pk=waiting.id)


def listener_of(workflow: Workflow) -> Node:
    return stored_nodes.get(workflow_id=workflow.id, kind="listener")


def operator_event(workflow_id: Any, reason: str) -> Any:
    found = [e for e in selectors.workflow_events(workflow_id=workflow_id) if e.reason == reason]
    if reason == "resumed":
        found = [e for e in found if e.node_id is None]
    (one,) = found
    return one


# --------------------------------------------------------------------------------------------------
# per role
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_resuming_a_stopped_workflow_needs_the_operate_permission_and_records_who_and_why(
    django_user_model: Any, stopped: Workflow, settle: Any, django_capture_on_commit_callbacks: Any, role: str
) -> None:
    client = client_for(django_user_model, role)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{BASE}/workflows/{stopped.id}/resume/", {"reason": "paid"}, format="json")
    stopped.refresh_from_db()
    if role not in OPERATORS:
        assert_refused(response, role)
        assert stopped.status == S.STOPPED
        return
    assert response.status_code == 200, response.content
    assert response.json()["status"] == S.EXECUTING
    assert stopped.status == S.EXECUTING
    event = operator_event(stopped.id, "resumed")
    assert event.detail["reason"] == "paid" and event.detail["actor"].startswith("operator-")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ["skip", "complete"])
def test_skipping_or_completing_a_waiting_task_needs_the_operate_permission(
    django_user_model: Any,
    waiting: Workflow,
    settle: Any,
    django_capture_on_commit_callbacks: Any,
    role: str,
    action: str,
) -> None:
    listener = listener_of(waiting)
    client = client_for(django_user_model, role)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"{BASE}/workflows/{waiting.id}/nodes/{listener.id}/{action}/",
            {"reason": "by phone"},
            format="json",
        )
    settle()
    waiting.refresh_from_db()
    if role not in OPERATORS:
        assert_refused(response, role)
        assert waiting.status == S.EXECUTING and listener_of(waiting).status == S.EXECUTING
        return
    assert response.status_code == 200, response.content
    assert waiting.status == S.COMPLETED
    assert listener_of(waiting).status == (S.SKIPPED if action == "skip" else S.COMPLETED)
    event = operator_event(waiting.id, f"{'skipped' if action == 'skip' else 'completed'}_by_operator")
    assert event.node_id == listener.id and event.detail["reason"] == "by phone"


@pytest.mark.parametrize("role", ROLES)
def test_firing_a_timer_now_needs_the_operate_permission(
    django_user_model: Any,
    dispatcher: InMemoryDispatcher,
    settle: Any,
    django_capture_on_commit_callbacks: Any,
    role: str,
) -> None:
    from tests.engine.test_timing import one_process, step, trigger

    with django_capture_on_commit_callbacks(execute=True):
        wf = one_process("ApiFireNow", trigger("remind"), step("after")).create_instance(
            submit_task=True, run_at=ports.now().timestamp() + 3600, note=SECRET
        )
    settle()
    timer = Timer.objects.get(workflow_id=wf.id)
    client = client_for(django_user_model, role)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{BASE}/workflows/{wf.id}/timers/{timer.pk}/fire/")
    settle()
    status = Workflow.objects.get(pk=wf.id).status
    if role not in OPERATORS:
        assert_refused(response, role)
        assert status == S.EXECUTING
        return
    assert response.status_code == 200, response.content
    assert status == S.COMPLETED
    assert operator_event(wf.id, "timer_fired_by_operator").detail["timer"] == timer.pk


@pytest.mark.parametrize("role", ROLES)
def test_dead_letters_are_listed_to_readers_and_replayed_by_operators(
    django_user_model: Any, waiting: Workflow, settle: Any, django_capture_on_commit_callbacks: Any, role: str
) -> None:
    broken = messages.Incoming(topic="orders", raw=b"{not json", source="kafka", partition=0, offset=7)
    routed = messages.messages_route([messages.dead_letter(broken, "not_json", "Expecting a property name")])[
        0
    ]
    dead = InboxMessage.objects.get(pk=routed.inbox_id)
    assert dead.status == InboxStatus.INVALID
    unmatched = messages.message_receive(topic="orders", payload={"order_id": "nobody-waits"})
    client = client_for(django_user_model, role)

    listed = client.get(f"{BASE}/messages/?status=dead")
    replay = client.post(f"{BASE}/messages/{unmatched.inbox_id}/replay/", {"reason": "retry"}, format="json")

    if role not in READERS:
        assert_refused(listed, role)
    else:
        assert listed.status_code == 200, listed.content
        assert [row["id"] for row in listed.json()["results"]] == [dead.pk]
        assert listed.json()["results"][0]["status"] == "invalid"
    if role not in OPERATORS:
        assert_refused(replay, role)
        assert InboxMessage.objects.get(pk=unmatched.inbox_id).replayed_by == ""
        return
    assert replay.status_code == 200, replay.content
    answer = replay.json()
    assert (answer["status"], answer["matched"], answer["message"]) == ("unmatched", 0, unmatched.inbox_id)
    assert answer["reason"] == "no_subscription"
    row = InboxMessage.objects.get(pk=unmatched.inbox_id)
    assert row.replayed_by.startswith("operator-") and row.replay_reason == "retry"


def test_a_replay_that_reaches_a_workflow_is_in_its_history(
    django_user_model: Any, waiting: Workflow, settle: Any, django_capture_on_commit_callbacks: Any
) -> None:
    services.workflow_update_parameters(workflow_id=waiting.id, changes={"order_id": "later"})
    early = messages.message_receive(topic="orders", payload={"order_id": "now"})
    services.workflow_update_parameters(workflow_id=waiting.id, changes={"order_id": "now"})
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(django_user_model, "operator").post(f"{BASE}/messages/{early.inbox_id}/replay/")
    settle()
    assert response.json()["matched"] == 1
    assert operator_event(waiting.id, "message_replayed").detail["message"] == early.inbox_id
    assert Workflow.objects.get(pk=waiting.id).status == S.COMPLETED


def test_a_parameter_edit_records_the_reason_from_the_query_and_rekeys_the_listener(
    django_user_model: Any, waiting: Workflow, settle: Any, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(django_user_model, "operator")
    response = client.patch(
        f"{BASE}/workflows/{waiting.id}/runtime-parameters/?reason=typo%20in%20the%20order",
        {"order_id": "o-fixed"},
        format="json",
    )
    assert response.status_code == 200, response.content
    event = operator_event(waiting.id, "parameters_changed")
    assert event.detail["reason"] == "typo in the order" and event.detail["changed"] == ["order_id"]
    with django_capture_on_commit_callbacks(execute=True):
        assert messages.message_receive(topic="orders", payload={"order_id": "o-fixed"}).matched == 1
    settle()
    assert Workflow.objects.get(pk=waiting.id).status == S.COMPLETED
    too_long = client.patch(
        f"{BASE}/workflows/{waiting.id}/runtime-parameters/?reason={'x' * 1001}", {"a": 1}, format="json"
    )
    assert_error(too_long, 400, "invalid")


# --------------------------------------------------------------------------------------------------
# errors: the API's shape, nothing changed
# --------------------------------------------------------------------------------------------------
def test_actions_the_state_does_not_allow_are_409_and_unknown_targets_404(
    django_user_model: Any, waiting: Workflow
) -> None:
    client = client_for(django_user_model, "operator")
    listener = listener_of(waiting)
    ship = stored_nodes.get(workflow_id=waiting.id, name__endswith="ship_executor_task")

    assert_error(client.post(f"{BASE}/workflows/{waiting.id}/resume/"), 409, "invalid_state")
    body = assert_error(
        client.post(f"{BASE}/workflows/{waiting.id}/nodes/{ship.id}/skip/"), 409, "invalid_state"
    )
    assert "has not started" in body["detail"]
    assert_error(client.post(f"{BASE}/workflows/{waiting.id}/nodes/nope/skip/"), 404, "node_not_found")
    assert_error(client.post(f"{BASE}/workflows/{waiting.id}/timers/99999999/fire/"), 404, "timer_not_found")
    assert_error(client.post(f"{BASE}/workflows/{waiting.id}/timers/x/fire/"), 404, "timer_not_found")
    assert_error(client.post(f"{BASE}/messages/{2**80}/replay/"), 404, "message_not_found")
    assert_error(client.post(f"{BASE}/workflows/not-a-uuid/resume/"), 404, "workflow_not_found")
    assert_error(
        client.post(f"{BASE}/workflows/{waiting.id}/nodes/{listener.id}/skip/", [1], format="json"),
        400,
        "invalid",
    )
    assert_error(
        client.post(
            f"{BASE}/workflows/{waiting.id}/nodes/{listener.id}/skip/", {"reason": "x" * 1001}, format="json"
        ),
        400,
        "invalid",
    )
    assert_error(
        client.post(
            f"{BASE}/workflows/{waiting.id}/nodes/{listener.id}/skip/", {"why": "typo"}, format="json"
        ),
        400,
        "invalid",
    )
    assert listener_of(waiting).status == S.EXECUTING
    assert_error(client.get(f"{BASE}/messages/?status=lost"), 400, "invalid")


def test_stop_and_retry_record_a_reason_from_the_body(django_user_model: Any, waiting: Workflow) -> None:
    client = client_for(django_user_model, "operator")
    response = client.post(f"{BASE}/workflows/{waiting.id}/stop/", {"reason": "duplicate"}, format="json")
    assert response.status_code == 200, response.content
    event = next(
        e
        for e in selectors.workflow_events(workflow_id=waiting.id)
        if e.node_id is None and e.reason == "stopped"
    )
    assert event.detail["reason"] == "duplicate"


def test_the_schema_describes_the_operator_actions(django_user_model: Any) -> None:
    schema = client_for(django_user_model, "reader").get(f"{BASE}/schema/?format=json").json()
    paths = schema["paths"]
    for path in (
        "workflows/{workflow_id}/resume/",
        "workflows/{workflow_id}/nodes/{node_id}/skip/",
        "workflows/{workflow_id}/nodes/{node_id}/complete/",
        "workflows/{workflow_id}/timers/{timer_id}/fire/",
        "messages/{inbox_id}/replay/",
    ):
        operation = paths[f"{BASE}/{path}"]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Reason"
        }, path
    assert "reason" in schema["components"]["schemas"]["Reason"]["properties"]
    assert "status" in str(paths[f"{BASE}/messages/"]["get"]["parameters"])
    patch = paths[f"{BASE}/workflows/{{workflow_id}}/runtime-parameters/"]["patch"]
    assert any(p["name"] == "reason" and p["in"] == "query" for p in patch["parameters"])
