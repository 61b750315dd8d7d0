"""The trace context through real Kafka: a command carries the trace of the request that started
its workflow, and a reply's trace continues in the bridge and the worker (tests/tracing.py); the
bridge's counts reach the metrics."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace

from dagger_django.observability import tracing

from ..helpers import sample, scrape, wait_for
from ..tracing import hex_id, read_spans
from .test_bridge import create, finished, new_id, wait_node

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
tracer = trace.get_tracer("tests")


def trace_id_of(traceparent: bytes) -> str:
    return "0x" + traceparent.decode().split("-")[1]


def test_the_trace_crosses_kafka_to_the_command_and_from_the_reply(
    bridge: Any,
    kafka: Any,
    celery_worker_process: Any,
    spans: Any,
    admin_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order = new_id("traced")
    with tracer.start_as_current_span("POST /orders") as request:
        wf = create("KafkaPizza", order_id=order, customer_id="c1", pizza_type=1)
    command = kafka.read("pizza_orders", lambda m: order.encode() == m.key())
    # request -> Celery -> the worker's task -> its outbox publish -> the command's headers
    assert trace_id_of(dict(command.headers())["traceparent"]) == hex_id(
        request.get_span_context().trace_id, 32
    )
    wait_node(wf.id, "Order_listener_task", "EXECUTING")

    with tracer.start_as_current_span("pizza service: ready") as reply:
        headers: dict[str, str] = {}
        from opentelemetry import propagate

        propagate.inject(headers)
    kafka.send("pizza_ready", {"order_id": order}, key=order, headers=headers)
    assert finished(wf.id).status == "COMPLETED"
    reply_trace = hex_id(reply.get_span_context().trace_id, 32)

    routed = wait_for(
        lambda: next(
            (
                s
                for s in read_spans(bridge.trace_file)
                if s["name"] == "dagger.bridge.route" and s["context"]["trace_id"] == reply_trace
            ),
            None,
        ),
        timeout=10,
        message="the bridge exported no span continuing the reply's trace",
    )
    assert routed["parent_id"] == hex_id(reply.get_span_context().span_id, 16)
    listener = wait_for(
        lambda: next(
            (
                s
                for s in read_spans(celery_worker_process.trace_file)
                if s["context"]["trace_id"] == reply_trace
                and s["attributes"].get(tracing.WORKFLOW_ID) == str(wf.id)
            ),
            None,
        ),
        timeout=10,
        message="no worker span of the workflow continues the reply's trace",
    )
    assert listener["attributes"][tracing.BUSINESS_KEY] == order

    # The bridge counts into the worker's directory (one host): its batch is in the metrics.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(celery_worker_process.metrics_dir))
    wait_for(
        lambda: (
            (f := scrape(admin_client))
            and (sample(f, "dagger_bridge_messages_total", status="routed") or 0) >= 1
            and (sample(f, "dagger_bridge_lag_seconds_count") or 0) >= 1
        ),
        timeout=10,
        message="the bridge's routing did not reach the metrics",
    )
