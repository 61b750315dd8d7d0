"""Fixtures of the observability tests: the engine with fakes, counters (the in-memory spans
are suite-wide, in tests/conftest.py)."""

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


@pytest.fixture
def counted() -> Callable[..., float]:
    """``counted(name, **labels)``: a sample of this process's metrics (0 when absent)."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return sample
