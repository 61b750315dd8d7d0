"""The outbox relay on confluent-kafka: produce outbox rows, wait for the broker, mark them sent.

One idempotent producer per process (created on first use, again after a fork), so a Celery
worker child, a web process and a bridge each keep a connection. ``relay(ids=...)`` runs right
after the commit that wrote the rows (``DAGGER['OUTBOX_RELAY']``); the bridges' sweep calls
``relay(older_than=...)`` for rows a crash left unsent. Without Kafka settings (the embedded
default) nothing is sent and rows stay pending, visible in the admin.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from functools import partial
from typing import Any

from ..engine.outbox import MESSAGE_ID_HEADER, decode_headers, outbox_relay
from ..models import OutboxMessage
from .config import client_config

logger = logging.getLogger("dagger_django.kafka.producer")

#: librdkafka defaults for the relay (``DAGGER['KAFKA']`` overrides any of them).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    # A message not acknowledged within this time fails (and stays in the outbox for a
    # sweep), rather than being retried for librdkafka's default five minutes.
    "message.timeout.ms": 10_000,
    "client.id": "dagger-django-relay",
}
#: Seconds to wait for the broker's acknowledgements of one relay call.
FLUSH_TIMEOUT = 15.0

_lock = threading.Lock()
_producer: Any = None
_producer_pid: int | None = None
_warned = False


def get_producer() -> Any:
    """The process's producer, or None when no ``bootstrap.servers`` is configured."""
    global _producer, _producer_pid, _warned
    config = client_config("producer", **PRODUCER_DEFAULTS)
    if not config.get("bootstrap.servers"):
        if not _warned:
            logger.warning("outbox: no Kafka bootstrap.servers configured; messages stay in the outbox")
            _warned = True
        return None
    with _lock:
        if _producer is None or _producer_pid != os.getpid():
            from confluent_kafka import Producer

            _producer = Producer(config)
            _producer_pid = os.getpid()
        return _producer


def close_producer() -> None:
    """Flush and drop the process's producer (tests, shutdown)."""
    global _producer, _producer_pid
    with _lock:
        if _producer is not None and _producer_pid == os.getpid():
            _producer.flush(FLUSH_TIMEOUT)
        _producer, _producer_pid = None, None


def publish(producer: Any, rows: list[OutboxMessage]) -> dict[int, str | None]:
    """Produce ``rows`` in order and wait for each acknowledgement: ``{row id: error or None}``."""
    from confluent_kafka import KafkaException

    results: dict[int, str | None] = {}

    def delivered(pk: int, err: Any, msg: Any) -> None:
        results[pk] = None if err is None else str(err)

    for row in rows:
        headers = [*decode_headers(row.headers), (MESSAGE_ID_HEADER, str(row.message_id).encode("ascii"))]
        kwargs = {
            "key": None if row.key is None else bytes(row.key),
            "value": None if row.value is None else bytes(row.value),
            "headers": headers,
            "on_delivery": partial(delivered, row.pk),
        }
        for _ in range(2):
            try:
                producer.produce(row.topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.5)  # the local queue is full: let deliveries drain, then retry
            except KafkaException as exc:
                results[row.pk] = str(exc)
                break
        else:
            results[row.pk] = "the producer's queue is full"
        producer.poll(0)
    producer.flush(FLUSH_TIMEOUT)
    for row in rows:
        results.setdefault(row.pk, f"not acknowledged within {FLUSH_TIMEOUT:g}s")
    return results


#: After a failed relay, after-commit relays are skipped for this many seconds (the sweep keeps
#: trying): a worker must not wait for Kafka's timeout on every task while Kafka is down.
PAUSE_AFTER_FAILURE = 30.0


class KafkaRelay:
    """``DAGGER['OUTBOX_RELAY']`` default: sends outbox rows with :func:`publish`."""

    def __init__(self) -> None:
        self._paused_until = 0.0

    def relay(self, *, ids: list[int] | None = None, older_than: dt.datetime | None = None) -> int:
        producer = get_producer()
        if producer is None:
            return 0
        send = partial(self._publish, producer)
        if ids is not None:
            if time.monotonic() < self._paused_until:
                return 0  # Kafka failed a moment ago: the sweep sends these
            return outbox_relay(publish=send, ids=ids)
        total = 0
        while True:
            sent = outbox_relay(publish=send, older_than=older_than)
            total += sent
            if sent < 500:
                return total

    def _publish(self, producer: Any, rows: list[OutboxMessage]) -> dict[int, str | None]:
        results = publish(producer, rows)
        if any(error is not None for error in results.values()):
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
        else:
            self._paused_until = 0.0
        return results


__all__ = ["KafkaRelay", "close_producer", "get_producer", "publish"]
