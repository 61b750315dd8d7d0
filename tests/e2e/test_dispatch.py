"""A broker outage after commit, on the real stack: this process's Celery app is pointed at a port
where nothing listens (the shared Redis keeps running for everyone else); the real worker, the
real database and the API do the rest."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from dagger_django import DAGBuilderHelper, Dagger, signals
from dagger_django import tasks as celery_tasks
from dagger_django.engine import recovery
from dagger_django.models import Status, Workflow
from tests.helpers import stored_nodes

from ..helpers import wait_for
from . import workflows as w

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
S = Status
TEMPLATE = "E2EBrokerOutage"


@Dagger.register_template(TEMPLATE)
def broker_outage_workflow(template_name: str) -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    steps = [helper.generic_executor_task_builder(task_type=w.Step, name=n) for n in ("first", "second")]
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks(steps)
    )
    return helper.generic_template(
        template_name=template_name, root_process=helper.build_and_link_processes([process])
    )


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: nothing listens there


def _use_broker(app: Any, url: str | None) -> None:
    # Sends use the write URL (broker_url itself follows the CELERY_BROKER_URL variable).
    app.conf.broker_write_url = url
    app._pool = None  # the connection and producer pools were built for the previous URL
    app.amqp._producer_pool = None


@pytest.fixture
def broker_unreachable(celery_worker_process: Any) -> Iterator[Any]:
    """This process sends to a dead port until ``restore()``; the worker stays on the real broker."""
    from config.celery import app

    real = app.conf.get("broker_write_url")

    class Switch:
        def restore(self) -> None:
            _use_broker(app, real)

    _use_broker(app, f"redis://127.0.0.1:{_dead_port()}/0")
    try:
        yield Switch()
    finally:
        _use_broker(app, real)


@pytest.fixture
def transitions() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def receiver(sender: Any, workflow: Any, from_status: str, to_status: str, **kwargs: Any) -> None:
        seen.append((from_status, to_status))

    signals.workflow_status_changed.connect(receiver, dispatch_uid="e2e_broker_outage")
    try:
        yield seen
    finally:
        signals.workflow_status_changed.disconnect(dispatch_uid="e2e_broker_outage")


def completed(workflow_id: Any) -> bool:
    return Workflow.objects.filter(pk=workflow_id, status=S.COMPLETED).exists()


def test_create_with_the_broker_unreachable_answers_201_and_recovery_completes_it(
    broker_unreachable: Any, transitions: Any, django_user_model: Any
) -> None:
    client = APIClient()
    client.force_authenticate(user=django_user_model.objects.create_superuser("outage", password="x-pw-1"))
    started = time.monotonic()
    response = client.post("/api/dagger/workflows/", {"template": TEMPLATE}, format="json")
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == S.EXECUTING
    assert elapsed < 5, f"the request waited {elapsed:.1f}s for the dead broker"
    assert (S.NOT_STARTED, S.EXECUTING) in transitions  # announced although nothing was sent
    owed = stored_nodes.get(workflow_id=body["id"], status=S.SUBMITTED)
    assert owed.redispatch_at is not None
    assert Workflow.objects.count() == 1  # nothing for a client to retry
    broker_unreachable.restore()
    assert recovery.nodes_recover() == 1  # the next sweep, not the 300 s lease
    wait_for(lambda: completed(body["id"]), message="the workflow to complete after recovery")


def test_worker_whose_next_dispatch_fails_ends_its_task_cleanly(
    broker_unreachable: Any, settings: Any
) -> None:
    settings.DAGGER = {**settings.DAGGER, "INLINE_STEPS": 0}  # the next step goes by message
    wf = Dagger.get_template(TEMPLATE).create_instance(submit_task=True)
    first = stored_nodes.get(workflow_id=wf.id, status=S.SUBMITTED)
    # The Celery task itself, run here against the dead broker, as the worker runs it.
    result = celery_tasks.run_node.apply(args=[str(wf.id), str(first.id)], task_id="outage-lease")
    assert result.successful(), result.traceback
    first = stored_nodes.get(pk=first.id)
    assert first.status == S.COMPLETED  # the committed transition stands
    second = stored_nodes.get(workflow_id=wf.id, status=S.SUBMITTED)
    assert second.redispatch_at is not None
    broker_unreachable.restore()
    assert recovery.nodes_recover() == 1
    wait_for(lambda: completed(wf.id), message="the workflow to complete after recovery")
