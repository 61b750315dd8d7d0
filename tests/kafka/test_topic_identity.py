"""A topic deleted and created again reuses its offsets: its new messages are not duplicates."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dagger_django.models import InboxMessage, InboxStatus

from ..helpers import wait_for
from .conftest import start_bridge

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def recreate(broker: Any, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.delete_topics([topic])[topic].result(timeout=10)

    def created() -> bool:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
        except Exception:  # noqa: BLE001 - the deletion may not have settled yet
            return False
        return True

    wait_for(created, message=f"{topic} to be created again")


def read_once(worker: Any, broker: Any, tmp_path: Any, topic: str) -> None:
    """A fresh group reads the topic from its start to its end, then exits."""
    process = start_bridge(
        worker, broker, tmp_path, "--topics", topic, "--once", group=f"identity-{uuid.uuid4().hex[:8]}"
    )
    assert process.proc.wait(timeout=90) == 0, process.log_tail()


def test_a_recreated_topics_message_at_a_reused_offset_is_routed(
    celery_worker_process: Any, kafka: Any, kafka_topics: Any, tmp_path: Any
) -> None:
    topic = f"recreated_{uuid.uuid4().hex[:8]}"
    kafka_topics.create_topics([topic], partitions=1)
    kafka.send(topic, {"order_id": "before"})
    read_once(celery_worker_process, kafka_topics, tmp_path, topic)
    [before] = InboxMessage.objects.filter(topic=topic)
    assert (before.offset, before.status) == (0, InboxStatus.UNMATCHED)
    cluster, topic_id = before.incarnation.split("/", 1)
    assert cluster and topic_id  # Tansu gives both (docs/bridge.md)

    recreate(kafka_topics, topic)
    kafka.send(topic, {"order_id": "after"})
    read_once(celery_worker_process, kafka_topics, tmp_path, topic)
    rows = list(InboxMessage.objects.filter(topic=topic).order_by("id"))
    assert [(r.offset, r.payload["order_id"]) for r in rows] == [(0, "before"), (0, "after")]
    assert rows[0].incarnation != rows[1].incarnation
