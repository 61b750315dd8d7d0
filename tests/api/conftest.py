"""Every API test starts with empty throttle counts and no cached health answer: both live in the
process for the whole session and would otherwise carry one test's requests into the next.

Shared fixtures: ``dispatcher`` (the engine's work kept in memory), ``operator_user`` (may read and
act) and ``api`` (that user's client). tests/api/test_permissions.py covers the other roles."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from rest_framework.test import APIClient

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


@pytest.fixture
def operator_user(django_user_model: Any) -> Any:
    """An operator: may read and act (``view_workflow`` and ``operate_workflow``); logs in as
    ``api-user`` / ``secret-pw``."""
    user = django_user_model.objects.create_user(username="api-user", password="secret-pw")
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="dagger_django", codename__in=["view_workflow", "operate_workflow"]
        )
    )
    return user


@pytest.fixture
def api(operator_user: Any, dispatcher: InMemoryDispatcher) -> APIClient:
    """The operator's client, force-authenticated; work the API dispatches stays in memory."""
    client = APIClient()
    client.force_authenticate(user=operator_user)
    return client
