"""OpenTelemetry traces of dagger's work (docs/observability.md).

Spans: each dagger Celery task a worker runs (``dagger_django.run_node``, ``run_nodes``,
``run_ready``, ``fire_timer``, ``run_stop_hooks``, ``sweep_timers``, ``recover_nodes``), each batch the Kafka
bridge routes, each outbox publish. The context travels in W3C ``traceparent``/``tracestate``
headers: in Celery messages (set when a task is published, read when it runs) and in Kafka
messages (written with the outbox row by the code that sent it, else set by the relay's
publish; read by the bridge), so a workflow started in a traced HTTP request continues in the
worker's span, and a command's reply continues its sender's trace.

The engine's commit observer names what each committed transition was about: the task span
running it gets ``dagger.workflow.id``, ``dagger.workflow.business_key``,
``dagger.workflow.template`` and ``dagger.node.name``; any other span (an HTTP request that
started a workflow) gets a ``dagger.transition`` event with those attributes.

Only the API package (``opentelemetry-api``) is needed; the application configures the SDK and
its exporters. Without the package nothing here imports it, and every function is a no-op.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..conf import dagger_settings

#: The W3C trace-context headers (the names the default propagator writes).
TRACE_HEADERS = ("traceparent", "tracestate")
#: A bridge span links to at most this many messages' traces.
MAX_LINKS = 32

WORKFLOW_ID = "dagger.workflow.id"
BUSINESS_KEY = "dagger.workflow.business_key"
TEMPLATE = "dagger.workflow.template"
NODE_NAME = "dagger.node.name"
NODE_ID = "dagger.node.id"

_otel: Any = None  # (trace, propagate, context) modules once installed


@dataclass
class _TaskSpan:
    """The span of the dagger task this thread runs, and what it was named after."""

    span: Any
    node_id: str | None = None
    #: Named after its workflow already (a batch's span never is: it gets an event per workflow).
    named: bool = False


_current: ContextVar[_TaskSpan | None] = ContextVar("dagger_task_span", default=None)


def available() -> bool:
    """Whether ``opentelemetry-api`` can be imported."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def install() -> bool:
    """Turn tracing on when ``opentelemetry-api`` is installed and ``DAGGER['TRACING']`` is true
    (idempotent); returns whether it is on."""
    global _otel
    if _otel is not None:
        return True
    if not dagger_settings.TRACING:
        return False
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        return False
    from ..engine import ports

    _otel = (trace, propagate, context)
    ports.observer_add(committed)
    # A message a task sends keeps that task's context, whichever process relays it later.
    ports.header_source_add(context_headers)
    return True


def enabled() -> bool:
    return _otel is not None


def _tracer() -> Any:
    return _otel[0].get_tracer("dagger_django")


# -- carrying the context ---------------------------------------------------------------------------
def inject(carrier: dict[str, Any]) -> None:
    """Write the current trace context into ``carrier`` (a Celery message's headers)."""
    if _otel is not None:
        _otel[1].inject(carrier)


def kafka_headers(existing: list[tuple[str, Any]]) -> list[tuple[str, bytes]]:
    """The trace-context headers to add to a Kafka message whose headers are ``existing``
    (none when it carries its own ``traceparent`` already, or tracing is off)."""
    if _otel is None or any(name in TRACE_HEADERS for name, _ in existing):
        return []
    carrier: dict[str, str] = {}
    _otel[1].inject(carrier)
    return [(name, value.encode("ascii")) for name, value in carrier.items() if name in TRACE_HEADERS]


def active() -> bool:
    """Whether something is being traced here (the current context holds a valid span)."""
    return _otel is not None and _otel[0].get_current_span().get_span_context().is_valid


def context_headers() -> dict[str, str]:
    """The current trace context as message headers (``traceparent``, ``tracestate``); {} when
    there is no valid context (nothing is being traced)."""
    if _otel is None or not _otel[0].get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    _otel[1].inject(carrier)
    return {name: value for name, value in carrier.items() if name in TRACE_HEADERS}


class _AttrGetter:
    """Reads a carrier: a dict (Kafka headers), or a Celery task's request, which holds its
    message's headers as attributes."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        if isinstance(carrier, Mapping):
            value = carrier.get(key)
        else:
            value = getattr(carrier, key, None)
            headers = getattr(carrier, "headers", None)  # a task applied locally keeps them there
            if value is None and isinstance(headers, Mapping):
                value = headers.get(key)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return list(TRACE_HEADERS)


_getter = _AttrGetter()


def extract(carrier: Any) -> Any:
    """The trace context carried by ``carrier`` (Celery request, or a dict of Kafka headers)."""
    return _otel[1].extract(carrier, getter=_getter)


# -- spans ----------------------------------------------------------------------------------------
@contextmanager
def span(
    name: str, *, attributes: Mapping[str, Any] | None = None, carriers: Sequence[Any] = ()
) -> Iterator[Any]:
    """A span around a block (None when tracing is off). ``carriers`` (Kafka headers of a batch):
    one carried context becomes the parent; several become links."""
    if _otel is None:
        yield None
        return
    trace = _otel[0]
    parent = None
    links = []
    if carriers:
        contexts = []
        seen = set()
        for carrier in carriers:
            ctx = extract(carrier)
            span_context = trace.get_current_span(ctx).get_span_context()
            if span_context.is_valid and span_context.span_id not in seen:
                seen.add(span_context.span_id)
                contexts.append((ctx, span_context))
        if len(contexts) == 1:
            parent = contexts[0][0]
        else:
            links = [trace.Link(sc) for _, sc in contexts[:MAX_LINKS]]
    with _tracer().start_as_current_span(
        name, context=parent, links=links, attributes=dict(attributes or {}), record_exception=True
    ) as current:
        yield current


def task_start(
    name: str, request: Any, *, workflow_id: Any = None, node_id: Any = None, batch: bool = False
) -> Any:
    """Start the span of a dagger Celery task, as a child of the context its message carried;
    returns what :func:`task_end` takes (None when tracing is off). The span is named after the
    first workflow it commits; a ``batch`` task's span (many workflows) gets an event for each."""
    if _otel is None:
        return None
    trace, _, context = _otel
    parent = extract(request)
    attributes: dict[str, Any] = {"celery.task_name": name}
    task_id = getattr(request, "id", None)
    if task_id:
        attributes["celery.task_id"] = str(task_id)
    if workflow_id is not None:
        attributes[WORKFLOW_ID] = str(workflow_id)
    if node_id is not None:
        attributes[NODE_ID] = str(node_id)
    current = _tracer().start_span(name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes)
    token = context.attach(trace.set_span_in_context(current, parent))
    held = _TaskSpan(current, node_id=None if node_id is None else str(node_id), named=batch)
    holder_token = _current.set(held)
    return (current, token, holder_token)


def task_end(started: Any, error: BaseException | None = None) -> None:
    """End a span :func:`task_start` began (recording ``error`` when the task raised)."""
    if started is None or _otel is None:
        return
    trace, _, context = _otel
    current, token, holder_token = started
    if error is not None:
        current.record_exception(error)
        current.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    current.end()
    _current.reset(holder_token)
    context.detach(token)


# -- the commit observer ----------------------------------------------------------------------------
def committed(state: Any) -> None:
    """Name the span that made this committed transition after its workflow and node."""
    if _otel is None or not state.changes:
        return
    wf = state.workflow
    held = _current.get()
    if held is not None and not held.named:
        node = None
        if held.node_id is not None:
            try:
                node = state.get(uuid.UUID(held.node_id))
            except ValueError:
                node = None
        if node is None:
            node = next((n for n, _, _ in state.changes if n is not None), None)
        held.span.set_attributes(_attributes(wf, node))
        held.named = True
        return
    current = _otel[0].get_current_span()
    if current.is_recording():
        node = next((n for n, _, _ in state.changes if n is not None), None)
        current.add_event("dagger.transition", attributes=_attributes(wf, node))


def _attributes(wf: Any, node: Any) -> dict[str, Any]:
    attributes = {WORKFLOW_ID: str(wf.id), TEMPLATE: wf.template_name}
    if wf.business_key is not None:
        attributes[BUSINESS_KEY] = wf.business_key
    if node is not None:
        attributes[NODE_NAME] = node.name
        attributes[NODE_ID] = str(node.id)
    return attributes
