"""The outbox relay on confluent-kafka: produce outbox rows, wait for the broker, mark them sent.

One idempotent producer per process (created on first use, again after a fork), so a Celery
worker child, a web process and a bridge each keep a connection. ``relay(ids=...)`` runs right
after the commit that wrote the rows (``DAGGER['OUTBOX_RELAY']``); the bridges' sweep calls
``relay(older_than=...)`` for rows a crash left unsent. Without Kafka settings (the embedded
default) nothing is sent and rows stay pending, visible in the admin.

A producer that failed for good (a fatal librdkafka error, or a broker that fenced or lost its
idempotent producer id: :func:`is_fatal`) refuses every later message, so it is replaced: the
rows it did not confirm are put back without an attempt counted, and the next pass builds a new
producer (:class:`ProducerSlot`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..conf import dagger_settings
from ..engine.outbox import MESSAGE_ID_HEADER, BrokerUnavailable, decode_headers, outbox_relay
from ..models import OutboxMessage
from ..observability import tracing
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

#: Builds a producer from librdkafka settings (``confluent_kafka.Producer`` by default). The
#: settings include an ``error_cb`` that must stay wired: it is how fatal errors are noticed.
ProducerFactory = Callable[[dict[str, Any]], Any]


def confluent_producer(config: dict[str, Any]) -> Any:
    """The default :data:`ProducerFactory`: ``confluent_kafka.Producer(config)``."""
    from confluent_kafka import Producer

    return Producer(config)


#: Errors of a delivery report that say the broker no longer takes this producer's id and epoch.
#: librdkafka does not call them fatal for an idempotent producer, yet the later messages of that
#: producer get them too (seen on Tansu storing on S3 under concurrent producers: a producer once
#: answered PRODUCER_FENCED was fenced for good): only a new producer, with a new id, sends again.
IDENTITY_ERRORS = frozenset(
    {"PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "UNKNOWN_PRODUCER_ID", "OUT_OF_ORDER_SEQUENCE_NUMBER"}
)


def is_fatal(error: Any) -> bool:
    """Whether a librdkafka error (a ``KafkaError``) means its producer can never send again:
    a fatal error (``_FATAL``, or flagged fatal) or one of :data:`IDENTITY_ERRORS`."""
    if error is None:
        return False
    try:
        from confluent_kafka import KafkaError

        return bool(error.fatal()) or error.code() == KafkaError._FATAL or error.name() in IDENTITY_ERRORS
    except AttributeError:  # not a KafkaError
        return False


def fatal_of(exc: BaseException) -> Any:
    """The fatal ``KafkaError`` a ``KafkaException`` carries (see :func:`is_fatal`), else None."""
    error = exc.args[0] if exc.args else None
    return error if is_fatal(error) else None


class ProducerSlot:
    """The process's producer: built by ``factory`` on first use, again after a fork, and again
    after it reported a fatal error (:meth:`discard`).

    Fatal errors reach us three ways, all handled: the ``error_cb`` librdkafka calls while the
    producer is polled or flushed (:meth:`fatal_error` then answers), a ``KafkaException`` from
    ``produce`` and a delivery report (both seen by :func:`publish`). ``replaced`` counts the
    producers discarded for a fatal error in this process.
    """

    def __init__(self, factory: ProducerFactory | None = None) -> None:
        self._factory = factory or confluent_producer
        self._lock = threading.RLock()
        self._producer: Any = None
        self._pid: int | None = None
        self._generation = 0
        self._fatal: Any = None
        self._warned = False
        self.replaced = 0
        self.last_fatal: str | None = None

    def get(self) -> Any:
        """The producer, or None when no ``bootstrap.servers`` is configured."""
        config = client_config("producer", **PRODUCER_DEFAULTS)
        if not config.get("bootstrap.servers"):
            if not self._warned:
                logger.warning("outbox: no Kafka bootstrap.servers configured; messages stay in the outbox")
                self._warned = True
            return None
        with self._lock:
            if self._producer is None or self._pid != os.getpid():
                self._generation += 1
                config["error_cb"] = partial(self._on_error, self._generation, config.get("error_cb"))
                self._producer = self._factory(config)
                self._pid = os.getpid()
                self._fatal = None
            return self._producer

    def _on_error(self, generation: int, chained: Any, error: Any) -> None:
        """librdkafka's ``error_cb`` (served by ``poll``/``flush``, in the polling thread)."""
        if is_fatal(error):
            with self._lock:
                if generation == self._generation:
                    self._fatal = error
        else:
            logger.debug("outbox: Kafka producer: %s", error)
        if callable(chained):  # the project's own error_cb from DAGGER['KAFKA']
            chained(error)

    def fatal_error(self, producer: Any) -> Any:
        """The fatal error ``producer`` reported through ``error_cb``, if it is still the slot's."""
        with self._lock:
            return self._fatal if producer is self._producer else None

    def current(self, producer: Any) -> bool:
        """Whether ``producer`` is still the slot's (another thread may have replaced it)."""
        with self._lock:
            return producer is self._producer

    def discard(self, producer: Any, error: Any) -> bool:
        """Drop ``producer`` after the fatal ``error``; the next :meth:`get` builds a new one.

        Whatever it still holds is purged without blocking, and it is not closed here: another
        thread may be inside its ``flush``, and the client is destroyed once the last user lets
        go of it. Returns False when another thread replaced it already.
        """
        with self._lock:
            if producer is not self._producer:
                return False
            self._producer, self._pid, self._fatal = None, None, None
            self.replaced += 1
            self.last_fatal = str(error)
            replaced = self.replaced
        logger.error(
            "outbox: the Kafka producer failed for good (%s); replacing it (%s replaced in this "
            "process). Messages it did not confirm stay pending and are sent again.",
            error,
            replaced,
        )
        try:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)  # serves the purged messages' reports now
        except Exception:  # noqa: BLE001 - a broken client: nothing more to save in it
            logger.debug("outbox: purging the failed producer raised", exc_info=True)
        return True

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Flush (up to ``timeout`` seconds) and drop the producer (tests, shutdown).

        What is still unacknowledged then is discarded: those rows are still pending in the outbox.
        """
        with self._lock:
            producer, mine = self._producer, self._pid == os.getpid()
            self._producer, self._pid, self._fatal = None, None, None
        if producer is not None and mine:
            try:
                if producer.flush(timeout):
                    producer.purge(in_queue=True, in_flight=True, blocking=False)
                    producer.flush(0)
            except Exception:  # noqa: BLE001 - a producer that failed for good raises here
                logger.debug("outbox: closing the producer raised", exc_info=True)


#: The producer of the default relay (``KafkaRelay()``) in this process.
_default_slot = ProducerSlot()


def get_producer() -> Any:
    """The process's producer, or None when no ``bootstrap.servers`` is configured."""
    return _default_slot.get()


def close_producer(timeout: float = FLUSH_TIMEOUT) -> None:
    """Flush (up to ``timeout`` seconds) and drop the process's producer (tests, shutdown).

    What is still unacknowledged then is discarded: those rows are still pending in the outbox.
    """
    _default_slot.close(timeout)


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
    #: a fatal error the producer reported (a ``KafkaError``): it will never send again
    fatal: Any = None


def publish(
    producer: Any, rows: list[OutboxMessage], *, timeout: float, purge_late: bool = False
) -> Published:
    """Produce ``rows`` (each with its ``dagger-message-id`` header) and wait up to ``timeout``
    seconds for their delivery reports. With ``purge_late``, what is still unacknowledged then is
    purged from the producer (its report says so), so nothing is left in flight behind our back.
    A fatal error (from ``produce``, a report, or raised by ``poll``/``flush``, as confluent-kafka
    does) stops the produces and is returned in ``fatal``.
    """
    out = Published()
    workflows = {str(row.workflow_id) for row in rows if row.workflow_id is not None}
    attributes: dict[str, Any] = {"messaging.system": "kafka", "messaging.batch.message_count": len(rows)}
    if len(workflows) == 1:
        attributes[tracing.WORKFLOW_ID] = workflows.pop()
    # The span's context goes in each message's traceparent header (unless the row carries one).
    with tracing.span("dagger.outbox.publish", attributes=attributes):
        _produce(producer, rows, out, timeout=timeout, purge_late=purge_late)
    return out


def _produce(
    producer: Any, rows: list[OutboxMessage], out: Published, *, timeout: float, purge_late: bool
) -> None:
    """The body of :func:`publish`: produce ``rows``, wait, purge; the outcome goes in ``out``."""
    from confluent_kafka import KafkaException

    def serve(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``poll``/``flush``/``purge``: a fatal error they raise is recorded, not propagated."""
        try:
            return call(*args, **kwargs)
        except KafkaException as exc:
            fatal = fatal_of(exc)
            if fatal is None:
                raise
            out.fatal = fatal
            return None

    def delivered(pk: int, err: Any, msg: Any) -> None:
        out.results[pk] = None if err is None else str(err)
        if err is not None and err.name() in OUTAGE_ERRORS:
            out.outage.add(pk)
        if is_fatal(err):
            out.fatal = err

    for row in rows:
        if out.fatal is not None:
            break  # this producer takes nothing more; the rest waits for its replacement
        headers = [*decode_headers(row.headers), (MESSAGE_ID_HEADER, str(row.message_id).encode("ascii"))]
        headers += tracing.kafka_headers(headers)
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
                serve(producer.poll, 0.5)  # the local queue is full: let deliveries drain, then retry
            except KafkaException as exc:
                fatal = fatal_of(exc)
                if fatal is not None:
                    out.fatal = fatal
                else:  # refused before sending (too large, bad topic name)
                    out.results[row.pk] = str(exc)
                break
        else:
            out.results[row.pk] = "the producer's queue is full"
            out.outage.add(row.pk)
        serve(producer.poll, 0)
    left = serve(producer.flush, timeout)
    if (left or left is None) and purge_late:
        serve(producer.purge, in_queue=True, in_flight=True, blocking=False)
        serve(producer.flush, 1.0)  # serves the purged messages' reports
        out.purged = True
    for row in rows:
        if row.pk not in out.results:
            out.results[row.pk] = (
                f"not sent: the producer failed ({out.fatal})"
                if out.fatal is not None
                else f"not acknowledged within {timeout:g}s"
            )
            out.outage.add(row.pk)


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
#: The first pause after a silent broker: a new producer's first delivery (metadata, connection)
#: can take longer than ``OUTBOX_COMMIT_WAIT`` with the broker up. Each further failure in a row
#: doubles the pause, up to :data:`PAUSE_AFTER_FAILURE`; a delivery ends the series.
FIRST_PAUSE = 2.0
#: What an after-commit relay adds to its wait when it claims rows: the purge of what was late
#: (one second of flush) and rounds started within the wait, with room to record the outcome.
AFTER_COMMIT_MARGIN = 10.0


def after_commit_lease(wait: float) -> float:
    """Seconds an after-commit relay claims its rows for: it gives up after ``wait`` seconds (and
    purges what is late), so a claim it could not release (the database went away before the
    outcome was recorded) ends within seconds, not after ``OUTBOX_LEASE_SECONDS``."""
    return 2 * max(0.0, wait) + AFTER_COMMIT_MARGIN


class KafkaRelay:
    """``DAGGER['OUTBOX_RELAY']`` default: sends outbox rows with :func:`publish`.

    After a commit it waits at most ``OUTBOX_COMMIT_WAIT`` seconds and does nothing while the
    broker is known to be down; the background relay (``relay(older_than=...)``) waits up to
    :data:`FLUSH_TIMEOUT` per round, with no transaction open.

    ``producer_factory`` builds its producers (default: ``confluent_kafka.Producer``, one per
    process shared with :func:`get_producer`); give one to wrap or instrument the client.
    A producer that failed fatally is replaced (:class:`ProducerSlot`): the rows it did not
    confirm are released without an attempt counted and sent by the next pass.
    """

    def __init__(self, producer_factory: ProducerFactory | None = None) -> None:
        self._paused_until = 0.0
        self._failures = 0  # silent-broker failures in a row
        self.producers = _default_slot if producer_factory is None else ProducerSlot(producer_factory)

    def relay(self, *, ids: list[int] | None = None, older_than: dt.datetime | None = None) -> int:
        producer = self.producers.get()
        if producer is None:
            return 0
        if ids is not None:
            if time.monotonic() < self._paused_until:
                return 0  # Kafka failed a moment ago: the background relay sends these
            wait = max(0.0, float(dagger_settings.OUTBOX_COMMIT_WAIT))
            return outbox_relay(
                publish=partial(self._publish, wait, True),
                ids=ids,
                budget=wait,
                lease=after_commit_lease(wait),
            )
        if time.monotonic() < self._paused_until:
            if not broker_reachable(producer):
                self._pause()
                return 0
            self._paused_until = 0.0
        limit = int(dagger_settings.OUTBOX_BATCH)
        total = 0
        while True:
            sent = outbox_relay(
                publish=partial(self._publish, FLUSH_TIMEOUT, False), older_than=older_than, limit=limit
            )
            total += sent
            if sent < limit or self._paused_until:
                return total

    def _pause(self) -> float:
        """Relay nothing after a commit for a while: :data:`FIRST_PAUSE` seconds, doubling with
        each failure in a row up to :data:`PAUSE_AFTER_FAILURE`. Returns the pause."""
        pause = min(PAUSE_AFTER_FAILURE, FIRST_PAUSE * 2 ** min(self._failures, 16))
        self._failures += 1
        self._paused_until = time.monotonic() + pause
        return pause

    def _publish(
        self, timeout: float, after_commit: bool, rows: list[OutboxMessage]
    ) -> dict[int, str | None]:
        # Asked for each round, not once per pass: a round after a fatal error gets a new producer.
        producer = self.producers.get()
        if producer is None:
            raise BrokerUnavailable("no Kafka bootstrap.servers configured")
        out = publish(producer, rows, timeout=timeout, purge_late=after_commit)
        fatal = out.fatal if out.fatal is not None else self.producers.fatal_error(producer)
        if fatal is not None or not self.producers.current(producer):
            # The producer failed (or another thread replaced it after it failed, purging what
            # it held), not the cluster: no attempt counted and no pause. Rows it did not
            # confirm are left out of the answer (released as not acknowledged) and go out with
            # the next pass, on a new producer, with the same dagger-message-id.
            if fatal is not None:
                self.producers.discard(producer, fatal)
            return {pk: error for pk, error in out.results.items() if error is None}
        results = out.results
        if any(error is None for error in results.values()):
            self._paused_until = 0.0
            self._failures = 0
            return results
        if results and set(results) <= out.outage:
            # Nothing went through and every error looks like silence. After a commit we do not
            # probe (that would be a wait); otherwise a metadata request tells an outage, which
            # counts no attempt, from a message the cluster will not take, which does.
            if out.purged or after_commit or not broker_reachable(producer):
                self._pause()
                raise BrokerUnavailable(next(iter(results.values())) or "the broker is unavailable")
        return results


__all__ = [
    "KafkaRelay",
    "after_commit_lease",
    "ProducerFactory",
    "ProducerSlot",
    "Published",
    "broker_reachable",
    "close_producer",
    "confluent_producer",
    "fatal_of",
    "get_producer",
    "is_fatal",
    "publish",
]
