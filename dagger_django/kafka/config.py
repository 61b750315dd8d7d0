"""librdkafka settings from ``DAGGER['KAFKA']``, shared by the consumer and the producer."""

from __future__ import annotations

from typing import Any

from ..conf import dagger_settings


def client_config(role: str | None = None, **defaults: Any) -> dict[str, Any]:
    """librdkafka settings: ``DAGGER['KAFKA']`` (SASL, SSL, ... pass through as given), then
    ``DAGGER['KAFKA_CONSUMER']`` or ``['KAFKA_PRODUCER']`` for ``role``, then ``defaults`` for
    whatever is still unset.

    Without ``bootstrap.servers`` there, the servers given to ``Dagger(broker=...)`` or
    ``Dagger(kafka_broker_list=...)`` are used.
    """
    config = dict(dagger_settings.KAFKA or {})
    if role == "consumer":
        config.update(dagger_settings.KAFKA_CONSUMER or {})
    elif role == "producer":
        config.update(dagger_settings.KAFKA_PRODUCER or {})
    if not config.get("bootstrap.servers"):
        servers = dagger_settings.overrides().get("kafka_bootstrap_servers")
        if servers:
            config["bootstrap.servers"] = servers
    for name, value in defaults.items():
        config.setdefault(name, value)
    return config


def configured() -> bool:
    return bool(client_config().get("bootstrap.servers"))
