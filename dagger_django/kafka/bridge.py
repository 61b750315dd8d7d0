"""The bridge: consume the listener topics, route each batch in one transaction, then commit offsets.

The order of the two commits is the whole guarantee. The database commit of a batch (its inbox
rows and deliveries) comes first, the Kafka offsets after; a bridge that dies in between reads
the batch again, and the inbox recognises every message (same ``dagger-message-id``, or same
topic incarnation, partition and offset): at-least-once delivery from Kafka, one effect per
message.

No message content can stop the bridge. Decoding, preparing and matching are guarded per
message (what fails becomes that message's dead letter); a batch the database or the code
refuses is routed again one message at a time, and a message that still fails is recorded as a
dead letter, at worst with only fields any database stores. Only an outage stops progress.

A database outage makes the bridge retry the same batch with backoff (it consumes nothing new
meanwhile); a broker outage is retried by librdkafka while the bridge logs it. SIGTERM or SIGINT
finishes the batch in hand - route, commit offsets - and leaves the group cleanly. Every
``sweep_interval`` seconds the bridge also runs the message sweep
(``engine.messages.messages_sweep``): buffered messages past their TTL, lost deliveries, inbox
retention, and outbox rows that no after-commit relay sent. See ``docs/bridge.md``.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connections
from django.utils.module_loading import import_string

from ..conf import dagger_settings
from ..engine import correlation, messages
from ..models.status import InboxStatus
from ..observability import metrics, tracing
from .codec import from_kafka, undecodable
from .config import client_config
from .identity import TopicIdentity

logger = logging.getLogger("dagger_django.bridge")

#: librdkafka defaults for the bridge's consumer (``DAGGER['KAFKA']`` overrides any of them).
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": True,
    # A fetch returns after this long even with nothing new (Kafka's default is 500 ms; some
    # brokers, e.g. Tansu, wait the whole time before returning what arrived meanwhile).
    "fetch.wait.max.ms": 100,
    "client.id": "dagger-django-bridge",
}
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


class BridgeError(Exception):
    """The bridge cannot run (no topics, bad configuration, a fatal Kafka error)."""


@dataclass
class BridgeStats:
    messages: int = 0
    batches: int = 0
    routed: int = 0
    duplicates: int = 0
    unmatched: int = 0
    invalid: int = 0
    db_retries: int = 0
    started: float = field(default_factory=time.monotonic)
    #: monotonic times: the first batch received, the last batch committed.
    first_at: float | None = None
    last_at: float | None = None

    def count(self, results: list[messages.Routed]) -> None:
        self.batches += 1
        self.messages += len(results)
        for result in results:
            if result.status == messages.DUPLICATE:
                self.duplicates += 1
            elif result.status == InboxStatus.ROUTED:
                self.routed += 1
            elif result.status == InboxStatus.UNMATCHED:
                self.unmatched += 1
            else:
                self.invalid += 1

    def rate(self) -> float:
        """Messages per second from the first batch received to the last one committed."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return self.messages / (self.last_at - self.first_at)

    def summary(self) -> str:
        return (
            f"{self.messages} messages in {self.batches} batches ({self.rate():.0f}/s while busy): "
            f"{self.routed} routed, {self.duplicates} duplicates, {self.unmatched} unmatched, "
            f"{self.invalid} invalid; {self.db_retries} database retries"
        )


def _lags(batch: list[Any], now: float) -> list[float]:
    """Seconds from each message's Kafka timestamp (when it has one) to ``now``."""
    lags = []
    for message in batch:
        timestamp = getattr(message, "timestamp", None)  # a consumer's wrapper may not give it
        kind, millis = timestamp() if timestamp is not None else (0, 0)
        if kind and millis > 0:  # 0: TIMESTAMP_NOT_AVAILABLE
            lags.append(now - millis / 1000.0)
    return lags


class Bridge:
    """One bridge process. ``run()`` blocks until stopped, ``--once`` is done, or ``max_messages``."""

    def __init__(
        self,
        *,
        topics: list[str] | None = None,
        group_id: str | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.5,
        once: bool = False,
        max_messages: int | None = None,
        sweep_interval: float = 5.0,
        consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
        incarnations: Callable[[list[str]], dict[str, str]] | None = None,
    ) -> None:
        self.topics = topics
        self.group_id = group_id or dagger_settings.KAFKA_GROUP_ID
        self.batch_size = max(1, batch_size)
        self.poll_timeout = poll_timeout
        self.once = once
        self.max_messages = max_messages
        self.sweep_interval = sweep_interval
        self.consumer_factory = consumer_factory
        #: topics -> ``{topic: incarnation}`` (``kafka.identity``); refreshed at each assignment
        #: and sweep, so a topic recreated under a running bridge is told apart within seconds.
        self.incarnations = incarnations or TopicIdentity()
        self._incarnation: dict[str, str] = {}
        self._last_offset: dict[tuple[str, int], int] = {}
        self._topics: list[str] = []
        self.stats = BridgeStats()
        self._stopping = False
        self._assigned: set[tuple[str, int]] = set()
        self._at_end: set[tuple[str, int]] = set()
        self._next_sweep = 0.0

    # -- control ----------------------------------------------------------------------------------
    def stop(self, *args: Any) -> None:
        """Finish the batch in hand, commit it, and return from ``run`` (a signal handler)."""
        if not self._stopping:
            logger.info("bridge: stopping after the current batch")
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def consumer_config(self) -> dict[str, Any]:
        config = client_config("consumer", **CONSUMER_DEFAULTS)
        config["group.id"] = self.group_id
        if not config.get("bootstrap.servers"):
            raise BridgeError(
                "No Kafka servers: set DAGGER['KAFKA']['bootstrap.servers'] (or Dagger(broker=...))."
            )
        return config

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> BridgeStats:
        topics = sorted(set(self.topics or correlation.listener_topics()))
        if not topics:
            raise BridgeError("No topics: no registered template has a listener task, and --topics is empty.")
        self._topics = topics
        self._refresh_incarnations()
        config = self.consumer_config()
        consumer = (self.consumer_factory or configured_consumer_factory())(config)
        consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        logger.info("bridge: group %r consuming %s", self.group_id, ", ".join(topics))
        self._sweep()
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                want = self.batch_size
                if self.max_messages is not None:
                    want = min(want, self.max_messages - self.stats.messages)
                    if want <= 0:
                        break
                batch = self._poll(consumer, want)
                if batch:
                    self._handle(consumer, batch)
                    idle_since = time.monotonic()
                elif self.once and self._done_once(idle_since):
                    break
                self._maybe_sweep()
        finally:
            try:
                consumer.close()
            except Exception:  # noqa: BLE001 - closing after a fatal error may fail as well
                logger.exception("bridge: closing the consumer failed")
            logger.info("bridge: %s", self.stats.summary())
        return self.stats

    def _poll(self, consumer: Any, want: int) -> list[Any]:
        from confluent_kafka import KafkaError

        # Wait for the first message only, then take what is already fetched: a batch is as big
        # as the backlog (up to ``want``) and a lone message is not held back to fill one.
        first = consumer.poll(self.poll_timeout)
        if first is None:
            return []
        received = [first]
        if want > 1:
            received.extend(consumer.consume(num_messages=want - 1, timeout=0))
        batch = []
        for message in received:
            error = message.error()
            if error is None:
                self._at_end.discard((message.topic(), message.partition()))
                batch.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                self._at_end.add((message.topic(), message.partition()))
            elif error.fatal():
                raise BridgeError(f"fatal Kafka error: {error}")
            else:
                # Broker down, topic missing, ...: librdkafka keeps retrying by itself.
                logger.warning("bridge: Kafka reports %s", error)
        return batch

    def _done_once(self, idle_since: float) -> bool:
        if self._assigned:
            return self._assigned <= self._at_end
        return time.monotonic() - idle_since > 30.0  # never got a partition

    def _handle(self, consumer: Any, batch: list[Any]) -> None:
        if self.stats.first_at is None:
            self.stats.first_at = time.monotonic()
        if self._offsets_went_back(batch):
            # A rebalance or restart re-reads (cheap to check), or the topic was recreated and
            # its offsets start again: learn its incarnation before deduplicating by offset.
            self._refresh_incarnations()
        incoming = [self._decode(m) for m in batch]
        # The batch's span continues the trace its messages carry (a traceparent header): one
        # trace becomes its parent, several become links. Listeners it wakes continue it.
        with tracing.span(
            "dagger.bridge.route",
            attributes={"messaging.system": "kafka", "messaging.batch.message_count": len(batch)},
            carriers=[m.headers for m in incoming] if tracing.enabled() else [],
        ):
            results = self._route(incoming)
        if results is None:
            return  # stopped during a database outage: not committed, read again later
        self.stats.count(results)
        counted = metrics.get()
        if counted is not None:
            counted.bridge_batch([str(r.status) for r in results], _lags(batch, time.time()))
        self._commit(consumer, batch)
        self.stats.last_at = time.monotonic()

    def _offsets_went_back(self, batch: list[Any]) -> bool:
        back = False
        for message in batch:
            where = (message.topic(), message.partition())
            last = self._last_offset.get(where)
            if last is not None and message.offset() <= last:
                back = True
            self._last_offset[where] = message.offset()
        return back

    def _decode(self, message: Any) -> messages.Incoming:
        incarnation = self._incarnation.get(message.topic(), "")
        try:
            return from_kafka(message, incarnation=incarnation)
        except Exception as exc:  # noqa: BLE001 - no content may stop the bridge
            logger.exception(
                "bridge: decoding %s[%s]@%s failed", message.topic(), message.partition(), message.offset()
            )
            return undecodable(message, exc, incarnation=incarnation)

    def _route(self, incoming: list[messages.Incoming]) -> list[messages.Routed] | None:
        """Route the batch in one transaction; if anything but an outage fails, route it again
        one message at a time. An outage retries (the rest of) the batch with backoff."""
        delay = BACKOFF_START
        alone = False
        while True:
            try:
                if alone:
                    return [self._route_alone(m) for m in incoming]
                return messages.messages_route(incoming)
            except (OperationalError, InterfaceError) as exc:
                self._database_down(exc, delay)
            except Exception as exc:  # noqa: BLE001 - a message the database or the code refused
                if alone:
                    raise  # pragma: no cover - _route_alone lets only outages through
                logger.warning("bridge: routing the batch failed (%r); routing one by one", exc)
                alone = True
                continue
            self.stats.db_retries += 1
            if self._stopping:
                return None
            delay = min(delay * 2, BACKOFF_MAX)

    def _route_alone(self, message: messages.Incoming) -> messages.Routed:
        """One message; if it fails, its dead letter; if that fails too, a last-resort dead
        letter of fields any database stores. Outages propagate (the batch is retried)."""
        try:
            return messages.messages_route([message])[0]
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:  # noqa: BLE001 - recorded with the message
            failure = exc
        reason = "unstorable" if isinstance(failure, DatabaseError) else "internal_error"
        what = "the database refused the message" if reason == "unstorable" else "routing failed"
        detail = f"{what}: {type(failure).__name__}: {failure}"
        logger.warning(
            "bridge: %s[%s]@%s is a dead letter: %s", message.topic, message.partition, message.offset, detail
        )
        try:
            return messages.messages_route([messages.dead_letter(message, reason, detail)])[0]
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:  # noqa: BLE001 - the message's own fields cannot be stored
            detail += f"; its dead letter failed too: {type(exc).__name__}: {exc}"
        return messages.messages_route([messages.dead_letter(message, reason, detail, last_resort=True)])[0]

    def _database_down(self, exc: Exception, delay: float) -> None:
        logger.warning("bridge: database error (%s); retrying the batch in %.1fs", exc, delay)
        for conn in connections.all():
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is broken anyway
                pass
        end = time.monotonic() + delay
        while time.monotonic() < end and not self._stopping:
            time.sleep(min(0.1, end - time.monotonic()))

    def _commit(self, consumer: Any, batch: list[Any]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        ends: dict[tuple[str, int], int] = {}
        for message in batch:
            key = (message.topic(), message.partition())
            ends[key] = max(ends.get(key, -1), message.offset())
        offsets = [
            TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in ends.items()
        ]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # A rebalance took the partition away: its next owner reads these messages again and
            # the inbox knows them.
            logger.warning("bridge: offset commit failed (%s); the batch will be deduplicated", exc)

    def _refresh_incarnations(self) -> None:
        try:
            found = self.incarnations(self._topics)
        except Exception:  # noqa: BLE001 - keep the last known ones; dedupe by id still works
            logger.exception("bridge: could not read the topics' incarnations")
            return
        for topic, incarnation in found.items():
            old = self._incarnation.get(topic)
            if old is not None and old != incarnation:
                logger.warning("bridge: topic %s changed incarnation (%s -> %s)", topic, old, incarnation)
            self._incarnation[topic] = incarnation

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._refresh_incarnations()
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        logger.info("bridge: assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._assigned -= gone
        self._at_end -= gone

    # -- sweeps -------------------------------------------------------------------------------------
    def _maybe_sweep(self) -> None:
        if self.sweep_interval > 0 and time.monotonic() >= self._next_sweep:
            self._sweep()

    def _sweep(self) -> None:
        if self.sweep_interval <= 0:
            return
        self._next_sweep = time.monotonic() + self.sweep_interval
        if self._topics:
            self._refresh_incarnations()
        try:
            close_old_connections()
            result = messages.messages_sweep()
            if result.total():
                logger.info("bridge: sweep %s", result)
        except Exception:  # noqa: BLE001 - a failed sweep is retried at the next interval
            logger.exception("bridge: sweep failed")


def configured_consumer_factory() -> Callable[[dict[str, Any]], Any]:
    """What makes the bridge's consumer from its librdkafka settings: ``DAGGER['KAFKA_CONSUMER_FACTORY']``
    (a dotted path) if set, else ``confluent_kafka.Consumer``."""
    path = dagger_settings.KAFKA_CONSUMER_FACTORY
    if path:
        factory: Callable[[dict[str, Any]], Any] = import_string(path)
        return factory
    from confluent_kafka import Consumer

    return Consumer


def sweep_forever(*, interval: float, once: bool = False, stop: Callable[[], bool] = lambda: False) -> None:
    """Run only the message sweep (deployments that route over HTTP and run no bridge)."""
    while True:
        try:
            close_old_connections()
            result = messages.messages_sweep()
            if result.total():
                logger.info("sweep %s", result)
        except Exception:  # noqa: BLE001
            logger.exception("sweep failed")
        if once or stop():
            return
        end = time.monotonic() + interval
        while time.monotonic() < end and not stop():
            time.sleep(min(0.2, end - time.monotonic()))
        if stop():
            return


__all__ = [
    "Bridge",
    "BridgeError",
    "BridgeStats",
    "CONSUMER_DEFAULTS",
    "configured_consumer_factory",
    "sweep_forever",
]
