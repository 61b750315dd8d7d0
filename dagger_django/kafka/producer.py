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
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..conf import dagger_settings
from ..engine.outbox import MESSAGE_ID_HEADER, BrokerUnavailable, decode_headers, outbox_relay
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


def close_producer(timeout: float = FLUSH_TIMEOUT) -> None:
    """Flush (up to ``timeout`` seconds) and drop the process's producer (tests, shutdown).

    What is still unacknowledged then is discarded: those rows are still pending in the outbox.
    """
    global _producer, _producer_pid
    with _lock:
        if _producer is not None and _producer_pid == os.getpid():
            if _producer.flush(timeout):
                _producer.purge(in_queue=True, in_flight=True, blocking=False)
                _producer.flush(0)
        _producer, _producer_pid = None, None


#: librdkafka errors that say "the broker is not answering" rather than "this message is refused".
OUTAGE_ERRORS = frozenset(
    {
        "_MSG_TIMED_OUT",
        "_TIMED_OUT",
        "_TIMED_OUT_QUEUE",
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_RESOLVE",
        "_PURGE_QUEUE",
        "_PURGE_INFLIGHT",
    }
)
#: Seconds a reachability probe (a metadata request) may take.
PROBE_TIMEOUT = 2.0


@dataclass
class Published:
    """What one :func:`publish` call got back from the broker."""

    #: row id -> None when acknowledged, else the error text
    results: dict[int, str | None] = field(default_factory=dict)
    #: rows whose error says the broker did not answer (timeout, transport, purged)
    outage: set[int] = field(default_factory=set)
    #: the wait ran out and the rest was purged from the producer's queue
    purged: bool = False


def publish(
    producer: Any, rows: list[OutboxMessage], *, timeout: float, purge_late: bool = False
) -> Published:
    """Produce ``rows`` (each with its ``dagger-message-id`` header) and wait up to ``timeout``
    seconds for their delivery reports. With ``purge_late``, what is still unacknowledged then is
    purged from the producer (its report says so), so nothing is left in flight behind our back.
    """
    from confluent_kafka import KafkaException

    out = Published()

    def delivered(pk: int, err: Any, msg: Any) -> None:
        out.results[pk] = None if err is None else str(err)
        if err is not None and err.name() in OUTAGE_ERRORS:
            out.outage.add(pk)

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
            except KafkaException as exc:  # refused before sending (too large, bad topic name)
                out.results[row.pk] = str(exc)
                break
        else:
            out.results[row.pk] = "the producer's queue is full"
            out.outage.add(row.pk)
        producer.poll(0)
    left = producer.flush(timeout)
    if left and purge_late:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(1.0)  # serves the purged messages' reports
        out.purged = True
    for row in rows:
        if row.pk not in out.results:
            out.results[row.pk] = f"not acknowledged within {timeout:g}s"
            out.outage.add(row.pk)
    return out


def broker_reachable(producer: Any, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the cluster answers a metadata request within ``timeout`` seconds."""
    try:
        producer.list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure means "not now"
        return False
    return True


#: After the broker was found unreachable, after-commit relays are skipped for this many seconds
#: and the background relay probes the broker before claiming rows: nobody waits on a dead broker.
PAUSE_AFTER_FAILURE = 30.0


class KafkaRelay:
    """``DAGGER['OUTBOX_RELAY']`` default: sends outbox rows with :func:`publish`.

    After a commit it waits at most ``OUTBOX_COMMIT_WAIT`` seconds and does nothing while the
    broker is known to be down; the background relay (``relay(older_than=...)``) waits up to
    :data:`FLUSH_TIMEOUT` per round, with no transaction open.
    """

    def __init__(self) -> None:
        self._paused_until = 0.0

    def relay(self, *, ids: list[int] | None = None, older_than: dt.datetime | None = None) -> int:
        producer = get_producer()
        if producer is None:
            return 0
        if ids is not None:
            if time.monotonic() < self._paused_until:
                return 0  # Kafka failed a moment ago: the background relay sends these
            wait = max(0.0, float(dagger_settings.OUTBOX_COMMIT_WAIT))
            return outbox_relay(publish=partial(self._publish, producer, wait, True), ids=ids, budget=wait)
        if time.monotonic() < self._paused_until:
            if not broker_reachable(producer):
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
                return 0
            self._paused_until = 0.0
        limit = int(dagger_settings.OUTBOX_BATCH)
        total = 0
        while True:
            sent = outbox_relay(
                publish=partial(self._publish, producer, FLUSH_TIMEOUT, False),
                older_than=older_than,
                limit=limit,
            )
            total += sent
            if sent < limit or self._paused_until:
                return total

    def _publish(
        self, producer: Any, timeout: float, after_commit: bool, rows: list[OutboxMessage]
    ) -> dict[int, str | None]:
        out = publish(producer, rows, timeout=timeout, purge_late=after_commit)
        results = out.results
        if any(error is None for error in results.values()):
            self._paused_until = 0.0
            return results
        if results and set(results) <= out.outage:
            # Nothing went through and every error looks like silence. After a commit we do not
            # probe (that would be a wait); otherwise a metadata request tells an outage, which
            # counts no attempt, from a message the cluster will not take, which does.
            if out.purged or after_commit or not broker_reachable(producer):
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
                raise BrokerUnavailable(next(iter(results.values())) or "the broker is unavailable")
        return results


__all__ = ["KafkaRelay", "Published", "broker_reachable", "close_producer", "get_producer", "publish"]
