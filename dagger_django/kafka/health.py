"""Is a bridge running? Asked of Kafka: the bridges' consumer group has live members."""

from __future__ import annotations

import logging

from ..conf import dagger_settings
from .config import client_config

logger = logging.getLogger("dagger_django.kafka")

#: Group states that mean at least one bridge is a member.
ALIVE_STATES = {
    "STABLE",
    "PREPARING_REBALANCING",
    "PREPARING_REBALANCE",
    "COMPLETING_REBALANCING",
    "COMPLETING_REBALANCE",
}


def bridge_alive(*, timeout: float = 2.0) -> bool | None:
    """True when the bridges' group (``KAFKA_GROUP_ID``) has members, False when it has none or
    Kafka does not answer within ``timeout``, None when no Kafka is configured."""
    config = client_config()
    if not config.get("bootstrap.servers"):
        return None
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**config, "socket.timeout.ms": int(timeout * 1000)})
        group = dagger_settings.KAFKA_GROUP_ID
        future = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        description = future.result(timeout=timeout + 1)
    except Exception as exc:  # noqa: BLE001 - any failure to ask means "not known to be alive"
        logger.warning("health: cannot describe the bridge group: %r", exc)
        return False
    state = getattr(description.state, "name", str(description.state)).upper()
    return bool(description.members) or state in ALIVE_STATES
