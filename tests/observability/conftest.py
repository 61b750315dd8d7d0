"""Fixtures of the observability tests: the engine with fakes, spans kept in memory, counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dagger_django.testing import FrozenClock, InMemoryDispatcher, engine_under_test


@pytest.fixture
def engine(transactional_db: Any) -> Iterator[tuple[InMemoryDispatcher, FrozenClock]]:
    """The real engine on the real database, an in-memory dispatcher and a frozen clock
    (transactional: the commit observers run after a real commit)."""
    with engine_under_test() as pair:
        yield pair


@pytest.fixture(scope="session")
def span_exporter() -> Any:
    """This process's spans, kept in memory (an SDK tracer provider, set once per process)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(span_exporter: Any) -> Any:
    span_exporter.clear()
    return span_exporter


@pytest.fixture
def counted() -> Callable[..., float]:
    """``counted(name, **labels)``: a sample of this process's metrics (0 when absent)."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return sample
