"""OpenTelemetry: spans of dagger's tasks named after their workflow, the context carried in
Celery and Kafka headers (the crossing of a real worker is in test_worker.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry import trace

from dagger_django import tasks
from dagger_django.kafka.bridge import Bridge
from dagger_django.kafka.producer import publish
from dagger_django.models import OutboxMessage
from dagger_django.observability import tracing

from ..engine import builders as b
from ..engine import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)
tracer = trace.get_tracer("tests")


def traceparent_of(span: Any) -> str:
    """The W3C ``traceparent`` of a span (live, or finished: ``get_span_context`` of either)."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def test_a_published_dagger_task_carries_the_trace_context(spans: Any) -> None:
    headers: dict[str, Any] = {}
    with tracer.start_as_current_span("POST /orders") as request:
        tasks._trace_publish(sender="dagger_django.run_node", headers=headers)
    assert headers["traceparent"] == traceparent_of(request)


def test_a_task_span_continues_the_message_trace_and_names_workflow_and_node(engine: Any, spans: Any) -> None:
    dispatcher, _ = engine
    tmpl = b.linear("ObsTraced", (t.Record, "a"))
    wf = tmpl.create_instance(submit_task=True, partition_key_lookup="order_id", order_id="o-77")
    workflow_id, node_id, _ = dispatcher.runs.popleft()
    with tracer.start_as_current_span("POST /orders") as request:
        carried = traceparent_of(request)
    tasks.run_node.apply(args=[workflow_id, node_id], headers={"traceparent": carried})
    (span,) = [s for s in spans.get_finished_spans() if s.name == "dagger_django.run_node"]
    assert span.context.trace_id == request.get_span_context().trace_id
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.attributes[tracing.WORKFLOW_ID] == str(wf.id)
    assert span.attributes[tracing.BUSINESS_KEY] == "o-77"
    assert span.attributes[tracing.TEMPLATE] == "ObsTraced"
    assert span.attributes[tracing.NODE_NAME].endswith("a_executor_task")


def test_a_workflow_started_in_a_request_span_gets_a_transition_event(engine: Any, spans: Any) -> None:
    with tracer.start_as_current_span("POST /orders"):
        wf = b.linear("ObsEvent", (t.Record, "a")).create_instance(submit_task=True, order_id="o-1")
    (request,) = [s for s in spans.get_finished_spans() if s.name == "POST /orders"]
    events = [e for e in request.events if e.name == "dagger.transition"]
    assert events and events[0].attributes[tracing.WORKFLOW_ID] == str(wf.id)


class CapturingProducer:
    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []

    def produce(self, topic: str, *, on_delivery: Any, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})
        on_delivery(None, None)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def test_an_outbox_publish_puts_its_span_context_in_the_kafka_headers(spans: Any) -> None:
    from django.utils import timezone

    row = OutboxMessage.objects.create(kind="command", topic="orders", value=b"{}", created_at=timezone.now())
    producer = CapturingProducer()
    with tracer.start_as_current_span("task") as outer:
        publish(producer, [row], timeout=1.0)
    (sent,) = producer.produced
    headers = dict(sent["headers"])
    (span,) = [s for s in spans.get_finished_spans() if s.name == "dagger.outbox.publish"]
    assert span.parent.span_id == outer.get_span_context().span_id
    assert headers["traceparent"].decode() == traceparent_of(span)


class HeaderMessage:
    """A consumed Kafka message with headers (what confluent-kafka hands the bridge)."""

    def __init__(self, offset: int, headers: list[tuple[str, bytes]]) -> None:
        self._offset, self._headers = offset, headers

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "obs-topic"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return json.dumps({"n": self._offset}).encode()

    def key(self) -> None:
        return None

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


class OneBatchConsumer:
    def __init__(self, batch: list[HeaderMessage]) -> None:
        self.batch = batch
        self.committed: list[Any] = []

    def commit(self, *, offsets: Any, asynchronous: bool) -> None:
        self.committed.extend(offsets)


def test_a_bridge_batch_continues_the_trace_its_message_carries(spans: Any) -> None:
    with tracer.start_as_current_span("producer") as sender:
        carried = traceparent_of(sender)
    bridge = Bridge(topics=["obs-topic"], incarnations=lambda topics: dict.fromkeys(topics, "test"))
    consumer = OneBatchConsumer([HeaderMessage(1, [("traceparent", carried.encode())])])
    bridge._handle(consumer, consumer.batch)
    (span,) = [s for s in spans.get_finished_spans() if s.name == "dagger.bridge.route"]
    assert span.context.trace_id == sender.get_span_context().trace_id
    assert span.parent.span_id == sender.get_span_context().span_id
    assert consumer.committed


def test_a_bridge_batch_of_several_traces_links_them(spans: Any) -> None:
    carried = []
    for name in ("first", "second"):
        with tracer.start_as_current_span(name) as sender:
            carried.append((sender.get_span_context(), traceparent_of(sender)))
    bridge = Bridge(topics=["obs-topic"], incarnations=lambda topics: dict.fromkeys(topics, "test"))
    consumer = OneBatchConsumer(
        [HeaderMessage(i, [("traceparent", tp.encode())]) for i, (_, tp) in enumerate(carried)]
    )
    bridge._handle(consumer, consumer.batch)
    (span,) = [s for s in spans.get_finished_spans() if s.name == "dagger.bridge.route"]
    assert span.parent is None
    assert {link.context.span_id for link in span.links} == {c.span_id for c, _ in carried}


def test_a_message_sent_in_a_span_is_stored_with_its_context(spans: Any) -> None:
    from dagger_django.engine.outbox import outbox_send

    with tracer.start_as_current_span("task") as sender:
        sent = outbox_send(topic="orders", value={"n": 1}, headers={"x-own": "kept"})
    stored = dict(OutboxMessage.objects.get(message_id=sent.message_id).headers)
    assert stored["traceparent"] == traceparent_of(sender)
    assert stored["x-own"] == "kept"
    untraced = outbox_send(topic="orders", value={"n": 2})
    assert OutboxMessage.objects.get(message_id=untraced.message_id).headers == []


def test_a_batch_task_span_gets_an_event_per_workflow(engine: Any, spans: Any) -> None:
    dispatcher, _ = engine
    tmpl = b.linear("ObsBatchTraced", (t.Record, "a"))
    workflows = [tmpl.create_instance(submit_task=True, order_id=f"o-{i}") for i in range(2)]
    targets = [[w, n] for w, n, _ in list(dispatcher.runs)]
    dispatcher.runs.clear()
    tasks.run_nodes.apply(args=[targets])
    (span,) = [s for s in spans.get_finished_spans() if s.name == "dagger_django.run_nodes"]
    assert tracing.WORKFLOW_ID not in span.attributes  # many workflows: named by its events
    named = {e.attributes[tracing.WORKFLOW_ID] for e in span.events if e.name == "dagger.transition"}
    assert named == {str(w.id) for w in workflows}
