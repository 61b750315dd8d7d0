"""The admin's workflow graph in a real browser (headless Chromium driven by Selenium)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagger_django.testing import InMemoryDispatcher, engine_under_test
from tests.helpers import stored_nodes

from .engine import builders as b

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and chromedriver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


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
