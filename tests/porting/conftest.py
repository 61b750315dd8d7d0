"""Fixtures of the porting tests: a bridge on the porting topics, an API client, async calls."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from ..kafka.conftest import BridgeProcess, KafkaClient, start_bridge
from . import workflows as w


@pytest.fixture(autouse=True)
def _forget_template_versions() -> None:
    """The engine caches template version rows per process; transactional tests delete them."""
    from dagger_django.engine import services

    cache = getattr(services, "_VERSIONS", None)
    if cache is not None:
        cache.clear()


@pytest.fixture(scope="session")
def porting_topics(kafka_broker: Any) -> Any:
    kafka_broker.create_topics(w.ALL_TOPICS, partitions=2)
    return kafka_broker


@pytest.fixture(scope="session")
def porting_bridge(
    celery_worker_process: Any, porting_topics: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeProcess]:
    """A real bridge process on the listener topics of the ported module."""
    process = start_bridge(
        celery_worker_process,
        porting_topics,
        tmp_path_factory.mktemp("porting-bridge"),
        "--import",
        "tests.porting.workflows",
        "--topics",
        ",".join(w.LISTENER_TOPICS),
    )
    try:
        process.wait_assigned()
        yield process
    finally:
        code = process.stop()
        if code != 0:
            print(f"\nthe porting bridge exited with {code}:\n{process.log_tail()}", file=sys.stderr)


@pytest.fixture(scope="session")
def kafka(porting_topics: Any) -> KafkaClient:
    return KafkaClient(porting_topics.bootstrap)


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    from django.contrib.auth.models import Permission

    client = APIClient()
    user = django_user_model.objects.create_user("porting", password="x")
    # A machine that posts events and reads workflows (docs/api.md: permissions).
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="dagger_django", codename__in=["post_event", "view_workflow"]
        )
    )
    client.force_authenticate(user)
    return client
