"""The admin: workflow list, the graph on the change page, stop and retry actions; the inbox and
replay (with the ``dagger_replay`` command)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from dagger_django import Dagger
from dagger_django.engine import messages
from dagger_django.models import InboxMessage, InboxStatus, Status, Workflow
from dagger_django.testing import InMemoryDispatcher, engine_under_test
from tests.helpers import stored_nodes

from .engine import builders as b
from .engine import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)
S = Status


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (dispatcher, _clock):
        yield dispatcher


@pytest.fixture
def staff(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(user)
    return client


def test_change_page_shows_the_graph_with_every_node_and_its_status(staff: Client, dispatcher: Any) -> None:
    wf = b.decision("AdminDecision").create_instance(submit_task=True, branch=1)
    dispatcher.drain()
    response = staff.get(f"/admin/dagger_django/workflow/{wf.id}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="dagger-graph"' in html
    for node in stored_nodes.filter(workflow_id=wf.id):
        assert f'data-node="{node.id}" data-status="{node.status}"' in html
    assert html.count('data-status="SKIPPED"') == 2  # left and its successor


def test_change_page_lists_every_node_and_every_transition_of_the_history(
    staff: Client, dispatcher: Any
) -> None:
    from dagger_django.engine import selectors

    wf = b.linear("AdminHistory", (t.Record, "a"), (t.Boom, "boom")).create_instance(submit_task=True)
    dispatcher.drain()
    html = staff.get(f"/admin/dagger_django/workflow/{wf.id}/change/").content.decode()

    nodes = html[html.index('id="dagger-nodes"') : html.index('id="dagger-events"')]
    for node in stored_nodes.filter(workflow_id=wf.id):
        assert f'data-node-row="{node.id}"' in nodes
    assert "Kafka listener" not in nodes and "Executor" in nodes and "Failure" in nodes
    history = html[html.index('id="dagger-events"') :]
    events = selectors.workflow_events(workflow_id=wf.id)
    assert history.count("data-event-reason=") == len(events) > 0
    assert "&quot;error&quot;" in history or "boom" in history.lower()  # the failure's detail is shown


def test_graph_nests_parallel_branches_inside_their_group(staff: Client, dispatcher: Any) -> None:
    tmpl = b.parallel_tasks("AdminParallel", b.JOIN_ALL, b.task(t.SetFlag, "x").build(), b.listener("wait"))
    wf = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    html = staff.get(f"/admin/dagger_django/workflow/{wf.id}/change/").content.decode()
    group = stored_nodes.get(workflow_id=wf.id, kind="parallel")
    start = html.index(f'data-node="{group.id}"')
    listener = stored_nodes.get(workflow_id=wf.id, kind="listener")
    assert html.index(f'data-node="{listener.id}"') > start
    assert 'data-status="EXECUTING"' in html


def test_list_filters_by_status_and_searches_by_business_key(staff: Client, dispatcher: Any) -> None:
    tmpl = b.linear("AdminList", (t.Record, "a"))
    done = tmpl.create_instance(partition_key_lookup="order_id", submit_task=True, order_id="o-77")
    tmpl.create_instance(partition_key_lookup="order_id", order_id="o-78")
    dispatcher.drain()
    html = staff.get("/admin/dagger_django/workflow/?status__exact=COMPLETED").content.decode()
    assert str(done.id) in html and "o-78" not in html
    html = staff.get("/admin/dagger_django/workflow/?q=o-78").content.decode()
    assert "o-78" in html and str(done.id) not in html


def test_stop_action_stops_and_reports_refusals(staff: Client, dispatcher: Any) -> None:
    tmpl = b.parallel_tasks("AdminStop", b.JOIN_ALL, b.listener("w1"), b.listener("w2"))
    running = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    response = staff.post(
        "/admin/dagger_django/workflow/",
        {"action": "stop_workflows", "_selected_action": [str(running.id)]},
        follow=True,
    )
    assert response.status_code == 200
    assert Workflow.objects.get(pk=running.id).status == S.STOPPED
    response = staff.post(
        "/admin/dagger_django/workflow/",
        {"action": "stop_workflows", "_selected_action": [str(running.id)]},
        follow=True,
    )
    assert "cannot be stopped" in response.content.decode()


def test_retry_action_resumes_a_failed_workflow(staff: Client, dispatcher: Any) -> None:
    from dagger_django.engine import services

    wf = b.linear("AdminRetry", (t.Boom, "boom")).create_instance(submit_task=True)
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == S.FAILURE
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    staff.post(
        "/admin/dagger_django/workflow/",
        {"action": "retry_workflows", "_selected_action": [str(wf.id)]},
        follow=True,
    )
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == S.COMPLETED


def test_change_page_of_an_unknown_workflow_is_not_an_error(staff: Client, dispatcher: Any) -> None:
    response = staff.get("/admin/dagger_django/workflow/not-a-uuid/change/", follow=True)
    assert response.status_code == 200


def test_search_by_workflow_id_and_template_filter_use_exact_matches(staff: Client, dispatcher: Any) -> None:
    first = b.linear("AdminSearchA", (t.Record, "a")).create_instance(partition_key_lookup="k", k="key-a")
    second = b.linear("AdminSearchB", (t.Record, "a")).create_instance(partition_key_lookup="k", k="key-b")
    html = staff.get(f"/admin/dagger_django/workflow/?q={first.id}").content.decode()
    assert str(first.id) in html and str(second.id) not in html
    html = staff.get("/admin/dagger_django/workflow/?q=key-b").content.decode()
    assert str(second.id) in html and str(first.id) not in html
    html = staff.get("/admin/dagger_django/workflow/?template_name=AdminSearchA").content.decode()
    assert str(first.id) in html and str(second.id) not in html
    assert "AdminSearchB" in html  # offered as a filter choice from the template table


# -- the message inbox: dead letters, unmatched and expired messages, replay -------------------------
@pytest.fixture
def replay_template() -> Iterator[Any]:
    """A registered template whose listener waits on topic "orders" (routing reads the registry)."""
    tmpl = b.template("AdminReplay", b.process("main", b.listener("wait")))
    Dagger.template_dags["AdminReplay"] = tmpl
    yield tmpl
    Dagger.template_dags.pop("AdminReplay", None)


def test_inbox_replay_action_routes_an_unmatched_message_to_the_listener_waiting_now(
    staff: Client, dispatcher: Any, replay_template: Any
) -> None:
    early = messages.message_receive(topic="orders", payload={"order_id": "r-1"})
    assert (early.status, early.matched) == (InboxStatus.UNMATCHED, 0)  # no such workflow yet
    wf = replay_template.create_instance(partition_key_lookup="order_id", submit_task=True, order_id="r-1")
    dispatcher.drain()

    listed = staff.get("/admin/dagger_django/inboxmessage/", {"status__exact": "unmatched"}).content.decode()
    assert f"/admin/dagger_django/inboxmessage/{early.inbox_id}/change/" in listed
    assert staff.get(f"/admin/dagger_django/inboxmessage/{early.inbox_id}/change/").status_code == 200
    response = staff.post(
        "/admin/dagger_django/inboxmessage/",
        {"action": "replay_messages", "_selected_action": [early.inbox_id]},
        follow=True,
    )
    assert "Replayed 1 message(s): 1 routed." in response.content.decode()
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == S.COMPLETED
    assert InboxMessage.objects.get(pk=early.inbox_id).status == InboxStatus.ROUTED


def test_inbox_search_finds_a_message_by_id_and_by_key_only(staff: Client, replay_template: Any) -> None:
    first = messages.message_receive(topic="orders", payload={"order_id": "k-1"}, key="k-1")
    other = messages.message_receive(topic="orders", payload={"order_id": "k-2"}, key="k-2")
    for term, found in ((str(first.inbox_id), first), ("k-2", other)):
        html = staff.get("/admin/dagger_django/inboxmessage/", {"q": term}).content.decode()
        missing = other if found is first else first
        assert f"/inboxmessage/{found.inbox_id}/change/" in html
        assert f"/inboxmessage/{missing.inbox_id}/change/" not in html


def test_dagger_replay_command_replays_by_status_and_refuses_bad_arguments(
    dispatcher: Any, replay_template: Any
) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    early = messages.message_receive(topic="orders", payload={"order_id": "c-1"})
    wf = replay_template.create_instance(partition_key_lookup="order_id", submit_task=True, order_id="c-1")
    dispatcher.drain()
    out = StringIO()
    call_command("dagger_replay", "--status", "unmatched", "--dry-run", stdout=out)
    assert f"would replay {early.inbox_id}" in out.getvalue()
    assert InboxMessage.objects.get(pk=early.inbox_id).status == InboxStatus.UNMATCHED  # dry run
    call_command("dagger_replay", "--status", "unmatched", "--topic", "orders", stdout=out)
    assert "replayed 1 message(s): 1 routed" in out.getvalue()
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == S.COMPLETED
    for argv, problem in (
        ((), "give inbox message ids, or --status"),
        ((str(early.inbox_id), "--status", "invalid"), "not both"),
        (("999999",), "no inbox message with id 999999"),
        (("--topic", "orders", str(early.inbox_id)), "--topic goes with --status"),
        (("--status", "invalid", "--limit", "0"), "--limit must be positive"),
    ):
        with pytest.raises(CommandError, match=problem):
            call_command("dagger_replay", *argv, stdout=StringIO())


def test_dagger_replay_command_records_who_replayed_and_why(
    dispatcher: Any, replay_template: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from io import StringIO

    from django.core.management import call_command

    from dagger_django.engine import selectors

    monkeypatch.setattr("getpass.getuser", lambda: "ops")
    early = messages.message_receive(topic="orders", payload={"order_id": "c-2"})
    wf = replay_template.create_instance(partition_key_lookup="order_id", submit_task=True, order_id="c-2")
    dispatcher.drain()
    call_command("dagger_replay", str(early.inbox_id), "--reason", "producer fixed", stdout=StringIO())
    row = InboxMessage.objects.get(pk=early.inbox_id)
    assert (row.replayed_by, row.replay_reason) == ("cli:ops", "producer fixed")
    (event,) = [e for e in selectors.workflow_events(workflow_id=wf.id) if e.reason == "message_replayed"]
    assert (event.detail["actor"], event.detail["reason"]) == ("cli:ops", "producer fixed")

    # --actor names someone else (a ticket, a person); no --reason records none.
    stray = messages.message_receive(topic="orders", payload={"order_id": "nobody-waits"})
    call_command("dagger_replay", str(stray.inbox_id), "--actor", "oncall:alice", stdout=StringIO())
    row = InboxMessage.objects.get(pk=stray.inbox_id)
    assert (row.replayed_by, row.replay_reason, row.status) == ("oncall:alice", "", InboxStatus.UNMATCHED)


def test_dagger_replay_command_names_the_cli_alone_when_the_os_user_has_no_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagger_django.management.commands.dagger_replay import cli_actor

    def nameless() -> str:
        raise OSError("no username")

    monkeypatch.setattr("getpass.getuser", nameless)
    assert cli_actor() == "cli"


# -- who may act: every action needs dagger_django.operate_workflow ------------------------------
ADMIN_ROLES = ("anonymous", "staff_without_permissions", "read_only_staff", "operator_staff")
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "anonymous": (),
    "staff_without_permissions": (),
    "read_only_staff": ("view_workflow", "view_inboxmessage"),
    "operator_staff": ("view_workflow", "view_inboxmessage", "operate_workflow"),
}


def admin_client(django_user_model: Any, role: str) -> Client:
    from django.contrib.auth.models import Permission

    client = Client()
    if role == "anonymous":
        return client
    user = django_user_model.objects.create_user(f"{role}-user", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="dagger_django", codename__in=ROLE_PERMISSIONS[role]
        )
    )
    client.force_login(user)
    return client


def post_action(client: Client, model: str, action: str, selected: list[Any]) -> Any:
    return client.post(
        f"/admin/dagger_django/{model}/", {"action": action, "_selected_action": [str(pk) for pk in selected]}
    )


@pytest.mark.parametrize("role", ADMIN_ROLES)
def test_stop_action_needs_the_operate_permission(django_user_model: Any, dispatcher: Any, role: str) -> None:
    wf = b.template("AdminStopRoles", b.process("main", b.listener("wait"))).create_instance(submit_task=True)
    dispatcher.drain()
    client = admin_client(django_user_model, role)

    listing = client.get("/admin/dagger_django/workflow/")
    post_action(client, "workflow", "stop_workflows", [wf.id])

    stopped = Workflow.objects.get(pk=wf.id).status == S.STOPPED
    assert stopped is (role == "operator_staff")
    assert ('value="stop_workflows"' in listing.content.decode()) is (role == "operator_staff")


@pytest.mark.parametrize("role", ADMIN_ROLES)
def test_retry_action_needs_the_operate_permission(
    django_user_model: Any, dispatcher: Any, role: str
) -> None:
    from dagger_django.engine import services

    wf = b.linear("AdminRetryRoles", (t.Boom, "boom")).create_instance(submit_task=True)
    dispatcher.drain()
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    client = admin_client(django_user_model, role)

    listing = client.get("/admin/dagger_django/workflow/")
    post_action(client, "workflow", "retry_workflows", [wf.id])
    dispatcher.drain()

    retried = Workflow.objects.get(pk=wf.id).status == S.COMPLETED
    assert retried is (role == "operator_staff")
    assert ('value="retry_workflows"' in listing.content.decode()) is (role == "operator_staff")


@pytest.mark.parametrize("role", ADMIN_ROLES)
def test_replay_action_needs_the_operate_permission(
    django_user_model: Any, dispatcher: Any, replay_template: Any, role: str
) -> None:
    early = messages.message_receive(topic="orders", payload={"order_id": "roles-1"})
    wf = replay_template.create_instance(
        partition_key_lookup="order_id", submit_task=True, order_id="roles-1"
    )
    dispatcher.drain()
    client = admin_client(django_user_model, role)

    listing = client.get("/admin/dagger_django/inboxmessage/")
    post_action(client, "inboxmessage", "replay_messages", [early.inbox_id])
    dispatcher.drain()

    replayed = InboxMessage.objects.get(pk=early.inbox_id).status == InboxStatus.ROUTED
    assert replayed is (role == "operator_staff")
    assert (Workflow.objects.get(pk=wf.id).status == S.COMPLETED) is (role == "operator_staff")
    assert ('value="replay_messages"' in listing.content.decode()) is (role == "operator_staff")


@pytest.mark.parametrize("role", ["anonymous", "staff_without_permissions"])
def test_workflows_are_hidden_from_those_without_the_view_permission(
    django_user_model: Any, dispatcher: Any, role: str
) -> None:
    wf = b.linear("AdminHidden", (t.Record, "a")).create_instance(
        partition_key_lookup="order_id", submit_task=True, order_id="hidden-77"
    )
    dispatcher.drain()
    client = admin_client(django_user_model, role)

    for url in ("/admin/dagger_django/workflow/", f"/admin/dagger_django/workflow/{wf.id}/change/"):
        response = client.get(url)
        assert response.status_code in (302, 403)
        assert b"hidden-77" not in response.content and str(wf.id).encode() not in response.content
