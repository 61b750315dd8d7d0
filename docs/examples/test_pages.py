"""The code of the newcomer pages is real: the example apps are in their pages word for word, and
the commands and requests the pages show work (README, first-workflow, porting, production)."""

import json
import re
import shlex
from pathlib import Path

import pytest
from django.core.management import get_commands
from rest_framework.test import APIClient

from dagger_django.engine.selectors import workflow_detail_get
from dagger_django.testing import engine_under_test

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = Path(__file__).resolve().parent
#: Each example app and the page that shows all of its modules.
PAGES = {"signups": "docs/first-workflow.md", "shipping": "docs/porting.md"}


def _blocks(page, language):
    text = (ROOT / page).read_text()
    return [m.group(1) for m in re.finditer(rf"^ *```{language}\n(.*?)^ *```$", text, re.S | re.M)]


def _dedent_shell(block):
    """A shell block's commands, continuation lines joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.parametrize(
    "module",
    [
        p
        for app in PAGES
        for p in sorted((EXAMPLES / app).glob("*.py"))
        if p.name not in {"__init__.py", "test_port.py"}
    ],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_example_module_is_shown_whole_in_its_page(module):
    page = PAGES[module.parent.name]
    assert module.read_text().strip() + "\n" in _blocks(page, "python"), f"{page} must show {module} as it is"


@pytest.mark.django_db(transaction=True)
def test_first_workflow_start_block_starts_a_signup():
    (block,) = [
        b
        for b in _blocks("docs/first-workflow.md", "python")
        if b.startswith("from dagger_django import Dagger\n")
    ]
    scope = {}
    with engine_under_test() as (dispatcher, clock):
        exec(compile(block, "first-workflow.md", "exec"), scope)
        dispatcher.drain()
    workflow = workflow_detail_get(workflow_id=scope["workflow"].id)
    assert (workflow.status, workflow.business_key) == ("COMPLETED", "ada@example.com")


def _curl_posts(page):
    """The JSON bodies and paths of the `curl ... -d '{...}' URL` commands of a page."""
    posts = []
    for block in _blocks(page, "bash"):
        for line in _dedent_shell(block):
            words = shlex.split(line)
            if words[0] == "curl" and "-d" in words:
                body = json.loads(words[words.index("-d") + 1])
                posts.append((words[-1].split("8000", 1)[1], body))
    return posts


@pytest.fixture
def admin_api(django_user_model):
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_superuser("admin", "a@example.com", "admin"))
    return client


@pytest.mark.django_db(transaction=True)
def test_the_create_requests_of_the_readme_and_first_workflow_create_workflows_by_their_key(admin_api):
    creates = [
        (p, b)
        for page in ("README.md", "docs/first-workflow.md")
        for p, b in _curl_posts(page)
        if p == "/api/dagger/workflows/"
    ]
    assert {b["template"] for _, b in creates} == {"DemoOrderWorkflow", "Signup"}
    with engine_under_test():
        for path, body in creates:
            response = admin_api.post(path, body, format="json")
            assert response.status_code == 201, response.content
            key = body["runtime_parameters"][body["partition_key_lookup"]]
            assert workflow_detail_get(workflow_id=response.json()["id"]).business_key == key


@pytest.mark.django_db(transaction=True)
def test_the_readme_event_reaches_the_waiting_demo_order(admin_api):
    from dagger_django import Dagger

    (event,) = [b for p, b in _curl_posts("README.md") if p == "/api/dagger/events/"]
    with engine_under_test() as (dispatcher, clock):
        order = Dagger.get_template("DemoOrderWorkflow").create_instance(
            partition_key_lookup="order_id",
            submit_task=True,
            order_id="order-4714",
            amount=250.0,
            payment="transfer",
        )
        dispatcher.drain()
        response = admin_api.post("/api/dagger/events/", event, format="json")
        assert response.status_code == 202 and response.json()["matched"] == 1
        dispatcher.drain()
    assert workflow_detail_get(workflow_id=order.id).status == "COMPLETED"


def test_the_management_commands_named_by_production_are_real():
    text = (ROOT / "docs/production.md").read_text()
    named = set(re.findall(r"manage\.py (\w+)", text))
    assert {"migrate", "dagger_kafka_bridge", "dagger_outbox", "dagger_setup_beat"} <= named
    assert named <= set(get_commands()), named - set(get_commands())
