"""The API's Swagger UI and Redoc pages in a real browser (headless Chromium driven by Selenium):
they draw the API from `schema/`, and nothing leaves this server: every request the page lets
through goes to it, and what the page's Content-Security-Policy blocks (Redoc's menu draws a logo
from cdn.redoc.ly) is never sent."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission

from tests.helpers import browser_requests

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BASE = "/api/dagger"


def _log_in(browser: Any, live_server: Any, django_user_model: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # A reader: staff to use the admin's login page, the view permission for the API.
    user = django_user_model.objects.create_user("reader", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="dagger_django", codename="view_workflow")
    )
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("reader")
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "user-tools"))


@pytest.mark.parametrize(
    ("page", "drawn"),
    [
        # Swagger UI: one block per operation.
        ("docs/", "return document.querySelectorAll('.opblock').length"),
        # Redoc: the operations in its side menu.
        ("docs/redoc/", "return document.querySelectorAll('li[role=menuitem]').length"),
    ],
)
def test_the_api_pages_draw_every_operation_and_ask_nothing_of_the_internet(
    browser: Any, live_server: Any, django_user_model: Any, page: str, drawn: str
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    _log_in(browser, live_server, django_user_model)
    browser_requests(browser)  # forget the login's requests
    browser.get(f"{live_server.url}{BASE}/{page}")

    WebDriverWait(browser, 30).until(lambda d: d.execute_script(drawn) >= 11)
    assert "/history/" in browser.page_source
    started, blocked = browser_requests(browser)
    assert f"{live_server.url}{BASE}/schema/" in started.values(), started
    outside = {
        rid: url for rid, url in started.items() if not url.startswith((live_server.url, "data:", "blob:"))
    }
    assert {rid: blocked.get(rid) for rid in outside} == {rid: "csp" for rid in outside}, outside
