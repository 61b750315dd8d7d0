"""The admin's workflow graph in a real browser (headless Chromium driven by Selenium).

``DAGGER_SCREENSHOT=docs/images/workflow-page.png`` (a path, relative to the repository)
makes ``test_workflow_page_panels_and_template_page_in_a_browser`` also save the workflow page
there: the README's screenshot (docs/testing.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission

from dagger_django.models import InboxMessage, Timer, Workflow
from dagger_django.testing import InMemoryDispatcher, engine_under_test
from tests.helpers import stored_nodes

from .conftest import ROOT
from .engine import builders as b
from .helpers import browser_requests
from .page_workflows import waiting_order

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    with engine_under_test() as (dispatcher, _clock):
        yield dispatcher


def test_admin_shows_a_workflow_graph_a_person_can_read(
    browser: Any, live_server: Any, django_user_model: Any, dispatcher: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    wf = b.decision("BrowserDecision").create_instance(submit_task=True, branch=1)
    dispatcher.drain()

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("boss")
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # The login POST must finish (its session cookie set) before the next page is asked for.
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "user-tools"))
    browser.get(f"{live_server.url}/admin/dagger_django/workflow/{wf.id}/change/")

    graph = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "dagger-graph"))
    boxes = graph.find_elements(By.CSS_SELECTOR, ".box")
    assert len(boxes) == stored_nodes.filter(workflow_id=wf.id).count()
    shown = {box.get_attribute("data-node"): box.get_attribute("data-status") for box in boxes}
    assert shown == {str(n.id): n.status for n in stored_nodes.filter(workflow_id=wf.id)}
    skipped = [box for box in boxes if box.get_attribute("data-status") == "SKIPPED"]
    assert skipped and all(box.is_displayed() for box in skipped)
    assert "decide" in graph.text and "right_executor_task" in graph.text
    graph.screenshot(str(tmp_path / "graph.png"))
    assert (tmp_path / "graph.png").stat().st_size > 5_000


def test_an_operator_finds_a_stuck_workflow_and_stops_it_with_a_reason(
    browser: Any, live_server: Any, django_user_model: Any, dispatcher: Any, tmp_path: Path
) -> None:
    import datetime as dt

    from django.utils import timezone
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dagger_django.models import HistoryRecord, Workflow

    from .engine import tasks as t

    django_user_model.objects.create_superuser("olga", "olga@example.com", "pw")
    waiting = b.template("BrowserWaiting", b.process("main", b.listener("wait_for_payment")))
    stuck = waiting.create_instance(submit_task=True)
    fresh = waiting.create_instance(submit_task=True)
    failed = b.linear("BrowserBoom", (t.Boom, "boom")).create_instance(submit_task=True)
    done = b.linear("BrowserDone", (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.drain()
    then = timezone.now() - dt.timedelta(minutes=90)
    Workflow.objects.filter(pk=stuck.id).update(time_created=then, time_submitted=then, updated_at=then)
    HistoryRecord.objects.filter(workflow_id=stuck.id).update(created_at=then)

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("olga")
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "user-tools"))

    browser.get(f"{live_server.url}/admin/dagger_django/workflow/")
    table = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "result_list"))
    badges = {b.get_attribute("data-status") for b in table.find_elements(By.CSS_SELECTOR, ".dagger-badge")}
    assert badges == {"EXECUTING", "FAILURE", "COMPLETED"}
    assert "wait_for_payment" in table.text and "1 h 30 min" in table.text
    assert str(done.id) in table.text and str(failed.id) in table.text
    browser.save_screenshot(str(tmp_path / "list.png"))

    # The stuck view: EXECUTING and nothing happened for an hour.
    browser.find_element(By.XPATH, "//a[normalize-space()='1 h']").click()
    WebDriverWait(browser, 20).until(lambda d: "stuck=1h" in d.current_url)
    table = browser.find_element(By.ID, "result_list")
    assert str(stuck.id) in table.text and str(fresh.id) not in table.text and str(done.id) not in table.text

    table.find_element(By.LINK_TEXT, str(stuck.id)).click()
    graph = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "dagger-graph"))
    assert len(graph.find_elements(By.CSS_SELECTOR, ".box")) >= 2 and "wait_for_payment" in graph.text

    browser.find_element(By.ID, "dagger-stop").click()
    reason = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "id_reason"))
    reason.send_keys("customer cancelled by phone")
    browser.find_element(By.ID, "dagger-confirm").click()

    message = WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".messagelist .success")
    )
    assert f"Stopped workflow {stuck.id} (customer cancelled by phone)." in message.text
    assert Workflow.objects.get(pk=stuck.id).status == "STOPPED"
    entry = browser.find_element(By.CSS_SELECTOR, '#dagger-events tr[data-event-reason="stopped"]')
    assert "olga" in entry.text and "customer cancelled by phone" in entry.text
    assert not browser.find_elements(By.ID, "dagger-stop")  # nothing left to stop

    graph = browser.find_element(By.ID, "dagger-graph")
    statuses = {box.get_attribute("data-status") for box in graph.find_elements(By.CSS_SELECTOR, ".box")}
    assert "STOPPED" in statuses and all(
        box.is_displayed() for box in graph.find_elements(By.CSS_SELECTOR, ".box")
    )
    graph.screenshot(str(tmp_path / "stopped-graph.png"))
    browser.save_screenshot(str(tmp_path / "stopped-page.png"))
    assert (tmp_path / "stopped-graph.png").stat().st_size > 5_000
    assert (tmp_path / "stopped-page.png").stat().st_size > 20_000

    # The HISTORY button: the workflow's own history, with who stopped it.
    browser.find_element(By.CSS_SELECTOR, "a.historylink").click()
    history = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "dagger-history"))
    entry = history.find_element(By.CSS_SELECTOR, 'tr[data-event-reason="stopped"]')
    assert entry.find_element(By.CSS_SELECTOR, "td.actor").text == "olga"
    browser.save_screenshot(str(tmp_path / "history.png"))


def _log_in(browser: Any, live_server: Any, username: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "user-tools"))


def _only_this_server(browser: Any, live_server: Any) -> None:
    """Every request the page made went to the test server (nothing from the internet)."""
    started, _blocked = browser_requests(browser)
    assert started, "the network log is empty: is goog:loggingPrefs set?"
    outside = [url for url in started.values() if not url.startswith((live_server.url, "data:", "blob:"))]
    assert outside == []


def _rows(panel: Any, attribute: str) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {
        row.get_attribute(attribute): " ".join(row.text.split())
        for row in panel.find_elements(By.CSS_SELECTOR, f"tr[{attribute}]")
    }


def _graph_drawn(browser: Any, expected_boxes: int) -> Any:
    """The graph, once every box is laid out on the page (visible, with a size)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    graph = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "dagger-graph"))
    boxes = graph.find_elements(By.CSS_SELECTOR, ".box")
    assert len(boxes) == expected_boxes
    assert all(box.is_displayed() and box.size["width"] > 40 and box.size["height"] > 20 for box in boxes)
    return graph


def test_workflow_page_panels_and_template_page_in_a_browser(
    browser: Any, live_server: Any, django_user_model: Any, engine: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    dispatcher, clock = engine
    reader = django_user_model.objects.create_user("reader", password="pw", is_staff=True)
    reader.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="dagger_django",
            codename__in=["view_workflow", "view_workflowtemplate", "view_inboxmessage"],
        )
    )
    wf = waiting_order("ShopOrder", dispatcher, clock, order_id="o-1042")
    clock.advance(seconds=1)
    nodes = stored_nodes.filter(workflow_id=wf.id)

    _log_in(browser, live_server, "reader")
    browser_requests(browser)  # forget the login's requests
    browser.get(f"{live_server.url}/admin/dagger_django/workflow/{wf.id}/change/")
    graph = _graph_drawn(browser, nodes.count())
    shown = {
        box.get_attribute("data-node"): box.get_attribute("data-status")
        for box in graph.find_elements(By.CSS_SELECTOR, ".box")
    }
    assert shown == {str(n.id): n.status for n in nodes}
    assert {"SKIPPED", "COMPLETED", "EXECUTING", "NOT_STARTED"} <= set(shown.values())

    parameters = _rows(browser.find_element(By.ID, "dagger-parameters"), "data-parameter")
    assert parameters["order_id"] == 'order_id str, required "o-1042"'
    assert parameters["note"] == 'note str, optional "<b>\\"quoted\\"</b> & escaped"'  # shown as text
    assert parameters["trace"].startswith("trace not declared [")

    (timer,) = Timer.objects.filter(workflow_id=wf.id, status="PENDING")
    timers = _rows(browser.find_element(By.ID, "dagger-timers"), "data-timer")
    assert (
        timers[str(timer.pk)].startswith("remind Trigger time ")
        and " in 2 min 59 s " in timers[str(timer.pk)]
    )

    listeners = _rows(browser.find_element(By.ID, "dagger-listeners"), "data-listener")
    texts = sorted(listeners.values())
    assert texts[0].startswith("wait_for_payment_listener_task Executing orders order_id o-1042 ")
    assert texts[0].endswith(" 0 0 -")  # a reader: no actions
    assert texts[1].startswith("wait_for_shipment_listener_task Not started shipments order_id o-1042 ")
    assert texts[1].endswith(" 0 1 -")

    panel = browser.find_element(By.ID, "dagger-messages")
    dead = InboxMessage.objects.get(topic="orders", status="invalid")
    messages = _rows(panel, "data-message")
    assert messages[str(dead.pk)].startswith(f"{dead.pk} Invalid (dead letter) orders o-1042 ")
    assert "no_key" in messages[str(dead.pk)]
    assert any("delivery buffered shipments" in text for text in messages.values())
    _only_this_server(browser, live_server)

    browser.save_screenshot(str(tmp_path / "workflow-page.png"))
    assert (tmp_path / "workflow-page.png").stat().st_size > 20_000
    target = os.environ.get("DAGGER_SCREENSHOT")
    if target:
        _save_page_down_to(browser, ROOT / target, "dagger-messages")
        assert (ROOT / target).stat().st_size > 50_000

    # The dead letter's link opens its inbox row.
    panel.find_element(By.LINK_TEXT, str(dead.pk)).click()
    assert "/admin/dagger_django/inboxmessage/" in browser.current_url
    assert "no_key" in browser.find_element(By.ID, "content").text

    # The template page: the definition's graph, its parameters, its versions.
    template = Workflow.objects.get(pk=wf.id).template
    browser.get(f"{live_server.url}/admin/dagger_django/workflowtemplate/{template.pk}/change/")
    graph = _graph_drawn(browser, nodes.count())
    assert {box.get_attribute("data-status") for box in graph.find_elements(By.CSS_SELECTOR, ".box")} == {""}
    assert "prepare" in graph.text and "decide" in graph.text
    declared = _rows(browser.find_element(By.ID, "dagger-declared-parameters"), "data-parameter")
    assert declared["branch"] == "branch required int - 0: express, 1: standard"
    versions = _rows(browser.find_element(By.ID, "dagger-versions"), "data-version")
    assert versions == {
        "1": f"v1 (this one) {template.digest[:16]}… {template.created_at:%Y-%m-%d %H:%M:%S} 1 workflows of this version"
    }
    assert not browser.find_elements(By.NAME, "_save") and not browser.find_elements(
        By.CSS_SELECTOR, ".deletelink"
    )
    _only_this_server(browser, live_server)
    browser.save_screenshot(str(tmp_path / "template-page.png"))
    assert (tmp_path / "template-page.png").stat().st_size > 20_000

    browser.find_element(By.CSS_SELECTOR, "a.dagger-version-workflows").click()
    table = browser.find_element(By.ID, "result_list")
    assert str(wf.id) in table.text


def _save_page_down_to(browser: Any, path: Path, element_id: str) -> None:
    """A screenshot of the page from its top down to the end of ``element_id``, whole (the
    window made as tall as that), as PNG at ``path``."""
    bottom = browser.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return Math.ceil(r.bottom + window.scrollY + 48);",
        element_id,
    )
    width = browser.get_window_size()["width"]
    browser.set_window_size(width, bottom + 140)  # + the browser's own frame, headless or not
    browser.execute_script("window.scrollTo(0, 0)")
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(path))


def test_an_operator_skips_a_waiting_listener_through_the_confirmation(
    browser: Any, live_server: Any, django_user_model: Any, dispatcher: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dagger_django.models import Workflow

    from .engine import tasks as t

    django_user_model.objects.create_superuser("olga", "olga@example.com", "pw")
    listener = b.helper.generic_listener_task_builder(
        topic="orders", task_type=t.Waiter, process_name="payment"
    )
    tmpl = b.template(
        "BrowserSkip", b.process("main", b.helper.build_and_link_tasks([listener, b.task(t.Record, "ship")]))
    )
    wf = tmpl.create_instance(submit_task=True, order_id="o-1")
    dispatcher.drain()
    waiting = stored_nodes.get(workflow_id=wf.id, kind="listener")

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("olga")
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "user-tools"))
    browser.get(f"{live_server.url}/admin/dagger_django/workflow/{wf.id}/change/")

    row = WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f'#dagger-nodes tr[data-node-row="{waiting.id}"]')
    )
    assert {
        a.get_attribute("data-action") for a in row.find_elements(By.CSS_SELECTOR, "a.dagger-node-action")
    } == {
        "skip",
        "complete",
    }
    row.find_element(By.ID, f"dagger-skip-{waiting.id}").click()
    reason = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "id_reason"))
    assert "payment_listener_task" in browser.find_element(By.ID, "content-main").text
    reason.send_keys("paid at the counter")
    browser.find_element(By.ID, "dagger-confirm").click()

    message = WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".messagelist .success")
    )
    assert f"Skipped task {waiting.name} (paid at the counter)." in message.text
    dispatcher.drain()  # the next task, handed to a worker after the skip's commit
    assert stored_nodes.get(pk=waiting.pk).status == "SKIPPED"
    assert Workflow.objects.get(pk=wf.id).status == "COMPLETED"
    entry = browser.find_element(
        By.CSS_SELECTOR, '#dagger-events tr[data-event-reason="skipped_by_operator"]'
    )
    assert "olga" in entry.text and "paid at the counter" in entry.text
    assert not browser.find_elements(By.ID, f"dagger-skip-{waiting.id}")  # skipped: no button left
