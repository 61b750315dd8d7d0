"""The demo project's own page at ``/`` (templates/demo/index.html, config/demo/views.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from config.demo.guide import ORDERS, order_parameters
from config.demo.workflows import TEMPLATE
from dagger_django import Dagger
from dagger_django.testing import engine_under_test


@pytest.fixture
def order() -> Any:
    with engine_under_test():
        return Dagger.get_template(TEMPLATE).create_instance(
            partition_key_lookup="order_id", **order_parameters(ORDERS[0], order_id="order-page")
        )


@pytest.mark.django_db
def test_index_links_the_admin_the_api_and_its_docs_and_hides_orders_from_strangers(order: Any) -> None:
    response = Client().get("/")
    assert response.status_code == 200
    assert [t.name for t in response.templates][0] == "demo/index.html"
    page = response.content.decode()
    for link in ('href="/admin/dagger_django/workflow/"', 'href="/api/dagger/"', 'href="/api/dagger/docs/"'):
        assert link in page
    assert 'href="/admin/login/?next=/"' in page
    assert "order-page" not in page and str(order.id) not in page
    for order_kind in ORDERS:
        assert order_kind.shows in page


@pytest.mark.django_db
def test_index_lists_the_demo_orders_with_their_admin_pages_to_a_user_who_may_view_them(
    order: Any, django_user_model: Any
) -> None:
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x")
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    client = Client()
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert f'href="/admin/dagger_django/workflow/{order.id}/change/">order-page</a>' in page
    assert "NOT_STARTED" in page


@pytest.mark.django_db(transaction=True)
def test_a_newcomer_logs_in_from_the_index_and_follows_an_order_to_its_admin_page(
    browser: Any, live_server: Any, django_user_model: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with engine_under_test():
        order = Dagger.get_template(TEMPLATE).create_instance(
            partition_key_lookup="order_id", **order_parameters(ORDERS[1], order_id="order-browser")
        )
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin")

    browser.get(f"{live_server.url}/")
    assert "order-browser" not in browser.page_source
    browser.find_element(By.LINK_TEXT, "Log in").click()
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("admin")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url == f"{live_server.url}/")

    browser.find_element(By.LINK_TEXT, "order-browser").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "dagger-graph"))
    assert browser.current_url == f"{live_server.url}/admin/dagger_django/workflow/{order.id}/change/"

    browser.get(f"{live_server.url}/")
    browser.find_element(By.LINK_TEXT, "its docs").click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url == f"{live_server.url}/api/dagger/docs/")
