"""Which incarnation of a topic an offset belongs to.

An offset names a message only within one incarnation of its topic: a topic deleted and created
again, or the same name on another cluster, starts again at offset 0. The bridge therefore
records, with each message that has no ``dagger-message-id``, ``<cluster id>/<topic id>``:

* the cluster id from the metadata (``ClusterMetadata.cluster_id``; every Kafka since 0.10.1,
  and Tansu, which calls its cluster ``tansu_cluster``);
* the topic id (KIP-516, a UUID given at creation) from ``AdminClient.describe_topics``
  (Kafka 2.8 and later, and Tansu).

When a part is unavailable (an older broker, or a denied describe) it is left empty, so the
identity degrades to the cluster id alone and, at worst, to the bare position, which is what an
older release recorded. See ``docs/bridge.md``.
"""

from __future__ import annotations

import logging
from typing import Any

from .config import client_config

logger = logging.getLogger("dagger_django.bridge")

#: Seconds to wait for the broker's answer (the bridge keeps the last answer when it times out).
TIMEOUT = 5.0
#: librdkafka settings an admin client rejects or does not need, taken from the shared config.
_NOT_FOR_ADMIN = ("group.id", "enable.auto.commit", "auto.offset.reset", "enable.partition.eof")


def topic_incarnations(topics: list[str], *, admin: Any = None) -> dict[str, str]:
    """``{topic: "<cluster id>/<topic id>"}`` for the topics that exist (see the module doc)."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    if not topics:
        return {}
    if admin is None:
        config = {k: v for k, v in client_config().items() if k not in _NOT_FOR_ADMIN}
        admin = AdminClient(config)
    metadata = admin.list_topics(timeout=TIMEOUT)
    cluster = str(metadata.cluster_id or "")
    present = [t for t in topics if t in metadata.topics and metadata.topics[t].error is None]
    found = {t: f"{cluster}/" for t in present}
    if present:
        try:
            futures = admin.describe_topics(TopicCollection(present), request_timeout=TIMEOUT)
            for topic, future in futures.items():
                described = future.result(timeout=TIMEOUT)
                if described.topic_id is not None:
                    found[topic] = f"{cluster}/{described.topic_id}"
        except Exception as exc:  # noqa: BLE001 - older brokers: the cluster id alone
            logger.info("bridge: no topic ids from the broker (%s); using the cluster id", exc)
    return {t: value[:100] for t, value in found.items()}


class TopicIdentity:
    """:func:`topic_incarnations` on one admin client, made at the first call and kept (the
    bridge asks at every assignment and sweep; a new client per call would reconnect)."""

    def __init__(self) -> None:
        self._admin: Any = None

    def __call__(self, topics: list[str]) -> dict[str, str]:
        from confluent_kafka.admin import AdminClient

        if self._admin is None:
            self._admin = AdminClient({k: v for k, v in client_config().items() if k not in _NOT_FOR_ADMIN})
        return topic_incarnations(topics, admin=self._admin)


__all__ = ["TopicIdentity", "topic_incarnations"]
