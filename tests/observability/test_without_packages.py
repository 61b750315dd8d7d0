"""Without prometheus_client and opentelemetry nothing of them is imported and nothing breaks."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from dagger_django import observability, tasks
from dagger_django.engine import ports
from dagger_django.models import Status, Workflow
from dagger_django.observability import metrics, tracing

from ..engine import builders as b
from ..engine import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)

ABSENT = ("prometheus_client", "opentelemetry", "opentelemetry.trace", "opentelemetry.propagate")


@pytest.fixture
def packages_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the extras' packages fails, as if they were not installed, and the app starts
    again from nothing registered."""
    for name in ABSENT:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    monkeypatch.setattr(ports, "_observers", ())
    monkeypatch.setattr(ports, "_header_sources", ())
    monkeypatch.setattr(metrics, "_metrics", None)
    monkeypatch.setattr(tracing, "_otel", None)
    observability.install()


def test_without_the_packages_no_observer_is_registered_and_workflows_run(
    packages_absent: None, engine: Any
) -> None:
    assert ports.observers() == () and ports.outgoing_headers() == {}
    assert metrics.get() is None and not tracing.enabled()
    assert not metrics.available() and not tracing.available()
    dispatcher, _ = engine
    wf = b.linear("ObsNoExtras", (t.Record, "a")).create_instance(submit_task=True)
    dispatcher.drain()
    assert Workflow.objects.get(pk=wf.id).status == Status.COMPLETED


def test_without_the_packages_traces_are_no_ops(packages_absent: None) -> None:
    headers: dict[str, Any] = {}
    tasks._trace_publish(sender="dagger_django.run_node", headers=headers)
    assert headers == {}
    assert tracing.kafka_headers([]) == []
    with tracing.span("dagger.bridge.route", carriers=[{"traceparent": b"00-x"}]) as span:
        assert span is None
    assert tracing.task_start("dagger_django.run_node", object()) is None


def test_without_the_packages_the_endpoint_says_metrics_are_off(
    packages_absent: None, admin_client: Any
) -> None:
    response = admin_client.get("/metrics")
    assert response.status_code == 404
    assert b"prometheus_client" in response.content


def test_the_app_starts_and_imports_its_modules_without_the_packages() -> None:
    code = (
        "import sys\n"
        f"for name in {ABSENT!r}: sys.modules[name] = None\n"
        "import django; django.setup()\n"
        "import dagger_django.tasks, dagger_django.kafka.bridge, dagger_django.kafka.producer\n"
        "import dagger_django.observability.views, config.urls\n"
        "from dagger_django.engine import ports\n"
        "print(len(ports.observers()), 'prometheus_client' in sys.modules and sys.modules['prometheus_client'] is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False"]
