"""The read-only panels of a workflow's admin page (runtime parameters, pending timers, waiting
listeners, messages) and the template page (graph, declared parameters, versions), per role,
with a number of queries that does not grow with the workflow."""

from __future__ import annotations

import html as htmllib
import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from dagger_django.engine import messages, selectors
from dagger_django.models import InboxMessage, Subscription, Timer, Workflow, WorkflowTemplate
from tests.helpers import stored_nodes

from .engine import builders as b
from .engine import tasks as t
from .page_workflows import REMIND_IN, waiting_order

pytestmark = pytest.mark.django_db(transaction=True)


def _user(django_user_model: Any, name: str, *codenames: str) -> Any:
    user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="dagger_django", codename__in=codenames)
    )
    return user


@pytest.fixture
def reader(client: Client, django_user_model: Any) -> Client:
    """Staff with the view permissions only (workflows, templates, the inbox)."""
    client.force_login(
        _user(django_user_model, "reader", "view_workflow", "view_workflowtemplate", "view_inboxmessage")
    )
    return client


def _section(html: str, panel_id: str) -> str:
    start = html.index(f'id="{panel_id}"')
    end = html.find('<div class="inline-group', start + 1)
    return html[start : end if end != -1 else len(html)]


def _rows(section: str, attribute: str) -> dict[str, str]:
    """{attribute value: the row's text} of a panel's table rows."""
    found = {}
    for value, body in re.findall(rf'<tr[^>]*{attribute}="([^"]*)"[^>]*>(.*?)</tr>', section, re.S):
        text = re.sub(r"<[^>]+>", " ", body)
        found[value] = " ".join(htmllib.unescape(text).split())
    return found


def test_workflow_page_shows_parameters_timers_listeners_and_messages(reader: Client, engine: Any) -> None:
    dispatcher, clock = engine
    wf = waiting_order("PanelsOrder", dispatcher, clock)
    clock.advance(seconds=0.5)
    html = reader.get(f"/admin/dagger_django/workflow/{wf.id}/change/").content.decode()

    # Between the graph and the history.
    assert html.index('id="dagger-graph"') < html.index('id="dagger-parameters"')
    assert html.index('id="dagger-messages"') < html.index('id="dagger-events"')

    parameters = _section(html, "dagger-parameters")
    rows = _rows(parameters, "data-parameter")
    assert list(rows)[:4] == ["order_id", "branch", "run_at", "note"]  # declared, in their order
    assert "str, required" in rows["order_id"] and '"o-1"' in rows["order_id"]
    assert "str, optional" in rows["note"]
    assert "not declared" in rows["trace"]  # written by a task after creation
    assert 'data-parameter="trace" data-declared="no"' in parameters
    # The value is JSON, escaped: the markup in it is shown, not interpreted.
    assert "&lt;b&gt;\\&quot;quoted\\&quot;&lt;/b&gt; &amp; escaped" in parameters
    assert '<b>"quoted"' not in parameters

    timers = _rows(_section(html, "dagger-timers"), "data-timer")
    (timer,) = Timer.objects.filter(workflow_id=wf.id, status="PENDING")
    text = timers[str(timer.pk)]
    # node, purpose, due at (to the millisecond), how far, attempt, actions
    assert re.fullmatch(
        r"remind Trigger time \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} in 2 min 59 s 0 -", text
    )  # "-": no action for a reader

    listeners = _rows(_section(html, "dagger-listeners"), "data-listener")
    since = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"
    payment, shipment = (
        listeners[str(stored_nodes.get(workflow_id=wf.id, name__endswith=f".{name}_listener_task").id)]
        for name in ("wait_for_payment", "wait_for_shipment")
    )
    # node, status, topic, key name, key value, since, pending, buffered, actions
    assert re.fullmatch(
        rf"wait_for_payment_listener_task Executing orders order_id o-1 {since} 0 0 -", payment
    )
    assert re.fullmatch(
        rf"wait_for_shipment_listener_task Not started shipments order_id o-1 {since} 0 1 -", shipment
    )

    messages = _section(html, "dagger-messages")
    rows = _rows(messages, "data-message")
    dead = InboxMessage.objects.get(topic="orders", status="invalid")
    kept = InboxMessage.objects.get(topic="shipments")
    assert list(rows) == [str(dead.pk), str(kept.pk)]  # newest first
    assert "Invalid (dead letter)" in rows[str(dead.pk)] and dead.reason in rows[str(dead.pk)]
    assert "delivery buffered" in rows[str(kept.pk)] and "wait_for_shipment" in rows[str(kept.pk)]
    assert f'href="/admin/dagger_django/inboxmessage/{dead.pk}/change/"' in messages

    # Each row has its actions cell; a reader may do nothing there.
    for panel in ("dagger-timers", "dagger-listeners", "dagger-messages"):
        section = _section(html, panel)
        assert '<th class="dagger-actions">Actions</th>' in section
        cells = re.findall(r'<td class="dagger-actions">(.*?)</td>', section, re.S)
        assert cells and all(cell.strip() == "-" for cell in cells)

    clock.advance(seconds=REMIND_IN + 1.5)  # the sweep has not fired it yet
    html = reader.get(f"/admin/dagger_django/workflow/{wf.id}/change/").content.decode()
    assert '<td class="time late">late by 2 s</td>' in _section(html, "dagger-timers")
    clock.advance(seconds=178)
    html = reader.get(f"/admin/dagger_django/workflow/{wf.id}/change/").content.decode()
    assert '<td class="time late">late by 3 min</td>' in _section(html, "dagger-timers")


def test_panels_say_when_there_is_nothing_and_bound_what_they_show(reader: Client, engine: Any) -> None:
    dispatcher, _clock = engine
    done = b.linear("PanelsDone", (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.drain()
    html = reader.get(f"/admin/dagger_django/workflow/{done.id}/change/").content.decode()
    assert "No pending timers." in html and "No listener waits." in html
    assert "No buffered, failed or dead-letter messages." in html
    assert "not declared" not in html  # the template declares nothing: nothing to compare with

    many = b.template("PanelsMany", *(b.process(f"p{i}", b.listener(f"w{i}")) for i in range(25)))
    wf = many.create_instance(partition_key_lookup="order_id", submit_task=True, order_id="k-9")
    dispatcher.drain()
    assert Subscription.objects.filter(workflow_id=wf.id).count() == 25
    html = reader.get(f"/admin/dagger_django/workflow/{wf.id}/change/").content.decode()
    listeners = _rows(_section(html, "dagger-listeners"), "data-listener")
    assert len(listeners) == selectors.PANEL_LIMIT
    assert f"Only the first {selectors.PANEL_LIMIT} listeners are shown." in html


def test_workflow_page_queries_do_not_grow_with_the_workflow(
    reader: Client, engine: Any, django_assert_max_num_queries: Any
) -> None:
    dispatcher, clock = engine
    small = waiting_order("PanelsSmall", dispatcher, clock, order_id="s-1")
    big = b.template("PanelsBig", *(b.process(f"p{i}", b.listener(f"w{i}")) for i in range(40)))
    large = big.create_instance(partition_key_lookup="order_id", submit_task=True, order_id="s-2")
    dispatcher.drain()
    for _ in range(30):  # dead letters under its business key
        messages.messages_route([messages.Incoming(topic="orders", key="s-2", invalid="bad_json", raw=b"{")])
    reader.get(f"/admin/dagger_django/workflow/{small.id}/change/")  # the session's first reads
    # session, user, the user's permissions (2), the workflow, its template (the field), nodes,
    # history; the declaration, timers, listeners and two for messages: 13 for a workflow of 10
    # nodes; one more for one of 81 (its nodes beyond the first page of 64 are in a page row,
    # read in one query however many pages: docs/internals.md), with 30 dead letters.
    counts = []
    for wf, budget in ((small, 13), (large, 14)):
        with django_assert_max_num_queries(budget) as captured:
            response = reader.get(f"/admin/dagger_django/workflow/{wf.id}/change/")
        assert response.status_code == 200
        counts.append(len(captured))
    assert counts[1] == counts[0] + 1
    html = response.content.decode()
    assert len(_rows(_section(html, "dagger-listeners"), "data-listener")) == selectors.PANEL_LIMIT
    assert len(_rows(_section(html, "dagger-messages"), "data-message")) == selectors.PANEL_LIMIT


def test_workflow_page_per_role(client: Client, django_user_model: Any, engine: Any) -> None:
    dispatcher, clock = engine
    wf = waiting_order("PanelsRoles", dispatcher, clock)
    page = f"/admin/dagger_django/workflow/{wf.id}/change/"

    client.force_login(_user(django_user_model, "nobody"))
    assert client.get(page).status_code == 403

    # View permission on workflows only: the panels, no link into the inbox it may not see.
    client.force_login(_user(django_user_model, "viewer", "view_workflow"))
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="dagger-messages"' in html and "/admin/dagger_django/inboxmessage/" not in html
    assert 'id="dagger-stop"' not in html

    client.force_login(_user(django_user_model, "operator", "view_workflow", "operate_workflow"))
    html = client.get(page).content.decode()
    assert 'id="dagger-timers"' in html and 'id="dagger-stop"' in html

    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(boss)
    html = client.get(page).content.decode()
    assert "/admin/dagger_django/inboxmessage/" in html
    assert client.post(page, {}).status_code == 403  # read-only, for everyone


def test_an_operator_fires_a_timer_moves_a_listener_on_and_replays_a_dead_letter_from_the_panels(
    client: Client, django_user_model: Any, engine: Any
) -> None:
    dispatcher, clock = engine
    wf = waiting_order("PanelsActions", dispatcher, clock, order_id="o-7")
    page = f"/admin/dagger_django/workflow/{wf.id}/change/"
    client.force_login(_user(django_user_model, "operator", "view_workflow", "operate_workflow"))
    html = client.get(page).content.decode()

    (timer,) = Timer.objects.filter(workflow_id=wf.id, status="PENDING")
    fire = f"/admin/dagger_django/workflow/{wf.id}/timers/{timer.pk}/fire/"
    assert f'href="{fire}"' in _section(html, "dagger-timers")

    # The waiting listener offers what its node row offers; the one not started offers nothing.
    listeners = _section(html, "dagger-listeners")
    payment = stored_nodes.get(workflow_id=wf.id, name__endswith=".wait_for_payment_listener_task")
    shipment = stored_nodes.get(workflow_id=wf.id, name__endswith=".wait_for_shipment_listener_task")
    for action in ("skip", "complete"):
        assert f'href="/admin/dagger_django/workflow/{wf.id}/nodes/{payment.id}/{action}/"' in listeners
    assert f"/nodes/{shipment.id}/" not in listeners

    # A dead letter offers Replay; the buffered delivery does not.
    dead = InboxMessage.objects.get(topic="orders", status="invalid")
    kept = InboxMessage.objects.get(topic="shipments")
    messages_html = _section(html, "dagger-messages")
    replay = f"/admin/dagger_django/workflow/{wf.id}/messages/{dead.pk}/replay/"
    assert f'href="{replay}"' in messages_html
    assert f"/messages/{kept.pk}/replay/" not in messages_html

    # Each opens the confirmation; the POST does it, records who and why, and goes back.
    assert "Fire timer" in client.get(fire).content.decode()
    response = client.post(fire, {"reason": "customer called"})
    assert response.status_code == 302 and response["Location"] == page
    timer.refresh_from_db()
    assert timer.status == "FIRED"

    assert "Replay message" in client.get(replay).content.decode()
    response = client.post(replay, {"reason": "key fixed upstream"})
    assert response.status_code == 302
    dead.refresh_from_db()
    assert dead.replayed_by == "operator" and dead.replay_reason == "key fixed upstream"

    # A reader gets no links, and a POST to them is refused.
    client.force_login(_user(django_user_model, "reader2", "view_workflow"))
    html = client.get(page).content.decode()
    assert "/fire/" not in html and "/replay/" not in html
    assert client.post(replay, {"reason": "x"}).status_code == 403


# -- the template page ------------------------------------------------------------------------------
def test_template_page_draws_the_graph_parameters_and_versions(
    reader: Client, engine: Any, django_assert_max_num_queries: Any
) -> None:
    dispatcher, clock = engine
    wf = waiting_order("PanelsTemplate", dispatcher, clock)
    waiting_order("PanelsTemplate", dispatcher, clock, order_id="o-2")
    template = Workflow.objects.get(pk=wf.id).template
    page = f"/admin/dagger_django/workflowtemplate/{template.pk}/change/"
    reader.get(page)
    with django_assert_max_num_queries(6):  # session, user, the template, its versions
        response = reader.get(page)
    html = response.content.decode()

    graph = _section(html, "dagger-graph")
    names = re.findall(r'<div class="name">([^<]+)</div>', graph)
    nodes = stored_nodes.filter(workflow_id=wf.id)
    assert sorted(names) == sorted(n.name.rsplit(".", 1)[-1] for n in nodes)
    assert 'data-status=""' in graph and "COMPLETED" not in graph  # a definition: no statuses
    # The parallel group holds its three branches; the decision's alternatives follow it.
    group = graph[graph.index('title="PanelsTemplate.fulfil.prepare"') :]
    assert group.index("wait_for_payment") < group.index("remind") < group.index("pack") < group.index("ship")
    assert "graph" not in re.findall(r'<div class="form-row field-(\w+)', html)  # no JSON blob

    declared = _rows(_section(html, "dagger-declared-parameters"), "data-parameter")
    assert declared["order_id"].split()[:3] == ["order_id", "required", "str"]
    assert declared["note"].split()[:4] == ["note", "optional", "str", "<none>"]

    versions = _section(html, "dagger-versions")
    row = _rows(versions, "data-version")[str(template.version)]
    assert " 2 workflows of this version" in row
    link = (
        f"/admin/dagger_django/workflow/?template_name=PanelsTemplate&amp;template_version={template.version}"
    )
    assert link in versions
    listed = reader.get(htmllib.unescape(link)).content.decode()
    assert str(wf.id) in listed
    assert 'href="/admin/dagger_django/workflow/?template_name=PanelsTemplate"' in versions


def test_template_page_is_read_only_and_a_version_in_use_cannot_be_deleted(
    client: Client, django_user_model: Any, engine: Any
) -> None:
    dispatcher, _clock = engine
    old = b.linear("PanelsVersions", (t.Record, "a")).create_instance(submit_task=True)
    new = b.linear("PanelsVersions", (t.Record, "a"), (t.Record, "b")).create_instance(submit_task=True)
    dispatcher.drain()
    v1 = Workflow.objects.get(pk=old.id).template
    v2 = Workflow.objects.get(pk=new.id).template
    assert (v1.version, v2.version) == (1, 2)
    Workflow.objects.filter(pk=old.id).delete()  # v1 is used by no workflow any more

    client.force_login(_user(django_user_model, "nobody"))
    assert client.get(f"/admin/dagger_django/workflowtemplate/{v2.pk}/change/").status_code == 403

    client.force_login(_user(django_user_model, "viewer", "view_workflowtemplate"))
    html = client.get(f"/admin/dagger_django/workflowtemplate/{v2.pk}/change/").content.decode()
    assert 'name="_save"' not in html and "deletelink" not in html
    rows = _rows(_section(html, "dagger-versions"), "data-version")
    assert list(rows) == ["2", "1"] and " 1 workflows" in rows["2"] and " 0 workflows" in rows["1"]

    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(boss)
    in_use = f"/admin/dagger_django/workflowtemplate/{v2.pk}/"
    html = client.get(in_use + "change/").content.decode()
    assert 'name="_save"' not in html and "deletelink" not in html
    assert client.post(in_use + "change/", {"name": "renamed"}).status_code == 403
    assert client.post(in_use + "delete/", {"post": "yes"}).status_code == 403
    assert WorkflowTemplate.objects.filter(pk=v2.pk, name="PanelsVersions").exists()

    unused = f"/admin/dagger_django/workflowtemplate/{v1.pk}/"
    assert "deletelink" in client.get(unused + "change/").content.decode()
    client.post(unused + "delete/", {"post": "yes"})
    assert not WorkflowTemplate.objects.filter(pk=v1.pk).exists()


def test_template_page_offers_the_versions_workflows_instead_of_djangos_history(
    reader: Client, client: Client, django_user_model: Any, engine: Any
) -> None:
    dispatcher, _clock = engine
    first = b.linear("PanelsHistory", (t.Record, "a")).create_instance(submit_task=True)
    second = b.linear("PanelsHistory", (t.Record, "a"), (t.Record, "b")).create_instance(submit_task=True)
    dispatcher.drain()
    v2 = Workflow.objects.get(pk=second.id).template
    page = f"/admin/dagger_django/workflowtemplate/{v2.pk}/"
    workflows = f"/admin/dagger_django/workflow/?template_name=PanelsHistory&template_version={v2.version}"

    html = reader.get(page + "change/").content.decode()
    tools = html[html.index('class="object-tools"') :]
    tools = tools[: tools.index("</ul>")]
    assert "historylink" not in tools and "/history/" not in html
    assert (
        f'href="{htmllib.escape(workflows)}" id="dagger-version-workflows-button">Workflows of v2<' in tools
    )

    # The history URL (a bookmark) opens the same list: this version's workflows only.
    response = reader.get(page + "history/")
    assert (response.status_code, response["Location"]) == (302, workflows)
    listed = reader.get(workflows).content.decode()
    assert str(second.id) in listed and str(first.id) not in listed

    assert reader.get("/admin/dagger_django/workflowtemplate/999999/history/").status_code == 302  # gone
    client.force_login(_user(django_user_model, "nobody"))  # reader is this client: now nobody
    assert client.get(page + "history/").status_code == 403


def test_version_counts_stop_at_the_cap(engine: Any) -> None:
    dispatcher, _clock = engine
    template = b.linear("PanelsCap", (t.Record, "a"))
    for _ in range(4):
        template.create_instance()
    (version,), more = selectors.template_versions_list(name="PanelsCap", cap=3)
    assert (version.workflows, version.workflows_exact, more) == (3, False, False)
    (version,), _more = selectors.template_versions_list(name="PanelsCap", cap=4)
    assert (version.workflows, version.workflows_exact) == (4, True)


def test_the_timers_note_links_to_the_timer_list_of_the_workflow(
    client: Client, django_user_model: Any, engine: Any
) -> None:
    dispatcher, clock = engine
    wf = waiting_order("PanelsTimerLink", dispatcher, clock)
    other = waiting_order("PanelsTimerLinkOther", dispatcher, clock, order_id="o-2")
    client.force_login(django_user_model.objects.create_superuser("boss", "boss@example.com", "pw"))
    response = client.get(f"/admin/dagger_django/timer/?workflow__id__exact={wf.id}&status__exact=PENDING")
    assert response.status_code == 200
    listed = response.content.decode()
    (mine,) = Timer.objects.filter(workflow_id=wf.id)
    (theirs,) = Timer.objects.filter(workflow_id=other.id)
    assert f"/admin/dagger_django/timer/{mine.pk}/change/" in listed
    assert f"/admin/dagger_django/timer/{theirs.pk}/change/" not in listed


def test_a_message_its_listener_failed_is_listed_with_the_error(reader: Client, engine: Any) -> None:
    from dagger_django import Dagger

    from .engine import listener_tasks as lt

    dispatcher, _clock = engine
    failing = b.helper.generic_listener_task_builder(
        topic="panel_failing", task_type=lt.Raises, process_name="pay"
    )
    template = b.template("PanelsFailedDelivery", b.process("main", failing.build()))
    wf = template.create_instance(partition_key_lookup="order_id", submit_task=True, order_id="f-1")
    dispatcher.drain()
    Dagger.template_dags[template.name] = template
    try:
        routed = messages.message_receive(topic="panel_failing", payload={"order_id": "f-1"})
    finally:
        del Dagger.template_dags[template.name]
    dispatcher.drain()

    html = reader.get(f"/admin/dagger_django/workflow/{wf.id}/change/").content.decode()
    rows = _rows(_section(html, "dagger-messages"), "data-message")
    text = rows[str(routed.inbox_id)]
    assert "Routed, delivery failed panel_failing - pay_listener_task" in text
    assert "cannot handle this message" in text


def test_more_timers_than_shown_are_noted_with_a_link_for_who_may_follow_it(
    client: Client, django_user_model: Any, engine: Any
) -> None:
    from dagger_django import Dagger, ParallelCompositeTask, ParallelCompositeTaskTemplateBuilder
    from dagger_django import TriggerTaskTemplateBuilder as Trigger

    from .engine import time_tasks as tt

    dispatcher, clock = engine
    triggers = [
        Trigger(Dagger.app)
        .set_type(tt.Remind)
        .set_name(f"r{i}")
        .set_time_to_execute_lookup_key("run_at")
        .build()
        for i in range(selectors.PANEL_LIMIT + 1)
    ]
    group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 1, triggers[0])
    for trigger in triggers[1:]:
        group.add_parallel_task(trigger)
    group.set_type(ParallelCompositeTask).set_name("group").set_task_operator(b.JOIN_ALL)
    template = b.template("PanelsManyTimers", b.process("main", group.build()))
    wf = template.create_instance(submit_task=True, run_at=clock.now().timestamp() + 60)
    dispatcher.drain()
    assert Timer.objects.filter(workflow_id=wf.id, status="PENDING").count() == selectors.PANEL_LIMIT + 1
    page = f"/admin/dagger_django/workflow/{wf.id}/change/"
    link = f'href="/admin/dagger_django/timer/?workflow__id__exact={wf.id}&amp;status__exact=PENDING"'

    client.force_login(_user(django_user_model, "viewer", "view_workflow"))
    timers = _section(client.get(page).content.decode(), "dagger-timers")
    assert len(_rows(timers, "data-timer")) == selectors.PANEL_LIMIT
    assert f"Only the first {selectors.PANEL_LIMIT} are shown." in timers and link not in timers

    client.force_login(_user(django_user_model, "timekeeper", "view_workflow", "view_timer"))
    timers = _section(client.get(page).content.decode(), "dagger-timers")
    assert link in timers
