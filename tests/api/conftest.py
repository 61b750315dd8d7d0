"""Every API test starts with empty throttle counts and no cached health answer: both live in the
process for the whole session and would otherwise carry one test's requests into the next."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache

from dagger_django.adapters.memory import InMemoryDispatcher
from dagger_django.api.views import health_checks
from dagger_django.engine import ports


@pytest.fixture(autouse=True)
def fresh_throttles_and_health() -> Iterator[None]:
    cache.clear()
    health_checks.clear()
    yield
    cache.clear()
    health_checks.clear()


@pytest.fixture
def dispatcher() -> Iterator[InMemoryDispatcher]:
    """The engine's work run in this process (``dispatcher.drain()``), no Celery."""
    fake = InMemoryDispatcher()
    previous = ports.set_dispatcher(fake)
    try:
        yield fake
    finally:
        ports.set_dispatcher(previous)
