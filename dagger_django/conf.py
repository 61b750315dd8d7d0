"""dagger_django's settings, read lazily from ``settings.DAGGER`` with typed defaults.

Values are looked up on every access (a dict lookup), so ``override_settings`` and the pytest
``settings`` fixture work. Arguments given to a ``Dagger(...)`` constructor (the original's way of
configuring) override the Django setting of the same meaning: the constructor hands the settings a
reader of them (:func:`read_overrides_from`), so the settings never import the facade.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class Defaults:
    #: Dotted path of the class that sends work to workers (engine.ports.Dispatcher).
    DISPATCHER: str = "dagger_django.adapters.celery.CeleryDispatcher"
    #: Largest accepted runtime parameters, in bytes of JSON.
    MAX_RUNTIME_PARAMETERS_BYTES: int = 256 * 1024
    #: How many consecutive steps of one workflow a worker runs in one Celery task before it
    #: hands the rest back to the queue (0 = one step per Celery task).
    INLINE_STEPS: int = 50
    #: ... and for how long, in seconds.
    INLINE_SECONDS: float = 5.0
    #: Listeners handed to workers together (those one bridge batch or replay matched) go in
    #: Celery messages of this many each, run in turn by one worker (1 = one message per listener).
    DISPATCH_BATCH: int = 50
    #: A starting worker process moves what it has loaded out of the garbage collector's sight
    #: (``gc.freeze``): its full passes no longer walk the modules and the app on every pass.
    WORKER_GC_FREEZE: bool = True
    #: Nodes made ready one at a time (a client's submit) go to workers through a list in Redis,
    #: one Celery message per batch (adapters/ready.py). None: where the Celery broker is Redis.
    READY_LIST: bool | None = None
    #: A worker gathers the ``run_node`` messages it has prefetched for up to this many seconds
    #: into one ``run_nodes`` batch, whose transitions share transactions (0: never).
    COALESCE_SECONDS: float = 0.005
    #: The API's workflow list counts at most this many rows per request (0: always a full count).
    LIST_COUNT_LIMIT: int = 10_000
    #: Delete the workflow (nodes and history too) once it is finished.
    DELETE_WORKFLOW_ON_COMPLETE: bool = False
    #: Callables (or dotted paths) called after commit with the workflow instance on each update.
    TASK_UPDATE_CALLBACKS: tuple[Any, ...] = ()
    #: Kafka topic receiving every workflow update (the Kafka issue wires the relay).
    TASK_UPDATE_TOPIC: str | None = None
    #: Seconds between timer sweeps (django-celery-beat entry; beat schedules whole seconds).
    TRIGGER_INTERVAL: float = 60.0
    #: Timers fired per sweep at most (and nodes recovered per recovery sweep).
    MAX_TASKS_PER_TRIGGER: int = 2000
    #: Due timers (of different workflows) a sweep fires per transaction (docs/time.md).
    TIMER_BATCH: int = 50
    #: A sweep claims the trigger and interval tasks its timers make ready in the firing
    #: transaction and runs them itself, within INLINE_SECONDS (False: they go to workers).
    TIMER_RUN_INLINE: bool = True
    #: Run a recovery sweep when a worker starts (see LEASE_SECONDS, docs/time.md).
    RESTART_TASKS_ON_BOOT: bool = True
    # -- time-driven issue: recovery and beat (docs/time.md) --
    #: A node left SUBMITTED/EXECUTING this many seconds without a change is handed out again;
    #: a running task's heartbeat (HEARTBEAT_SECONDS) counts as a change.
    LEASE_SECONDS: float = 300.0
    #: While a worker runs a node's hook, it refreshes the node's lease this often (one UPDATE),
    #: so a task that runs longer than LEASE_SECONDS is not handed out again (docs/time.md).
    HEARTBEAT_SECONDS: float = 10.0
    #: Seconds between periodic recovery sweeps (a second beat entry); 0 disables them.
    RECOVERY_INTERVAL: float = 60.0
    #: Register dagger's beat entries after ``migrate`` (else run ``manage.py dagger_setup_beat``).
    BEAT_AUTO_SETUP: bool = True
    #: Celery queue of the timer sweep and of timers' countdown messages (None = CELERY_QUEUE).
    TIMER_QUEUE: str | None = None
    # -- Kafka issue: messages in and out (docs/correlation.md, docs/bridge.md) --
    #: librdkafka settings shared by the bridge's consumer and the outbox relay's producer
    #: (``bootstrap.servers``, ``security.protocol``, ``sasl.*``, ``ssl.*``, ...). None = {}.
    KAFKA: dict[str, Any] | None = None
    #: Extra librdkafka settings for the bridge's consumer only / the relay's producer only.
    KAFKA_CONSUMER: dict[str, Any] | None = None
    KAFKA_PRODUCER: dict[str, Any] | None = None
    #: Dotted path of a callable ``(librdkafka settings) -> consumer`` that makes the bridge's
    #: consumer (a wrapper that instruments ``confluent_kafka.Consumer``, say); None = that class.
    KAFKA_CONSUMER_FACTORY: str | None = None
    #: Consumer group of the bridges (``dagger_kafka_bridge --group-id`` overrides it).
    KAFKA_GROUP_ID: str = "dagger-bridge"
    #: Dotted path of the outbox relay (``engine.outbox.Relay``); None = rows wait for a sweep.
    OUTBOX_RELAY: str | None = "dagger_django.kafka.producer.KafkaRelay"
    #: A row whose produce failed this many times while the broker answered becomes DEAD
    #: (an outage counts no attempt). See docs/bridge.md, "The outbox relay".
    OUTBOX_MAX_ATTEMPTS: int = 10
    #: Seconds before a failed row is tried again, doubled per attempt, at most OUTBOX_RETRY_MAX_DELAY.
    OUTBOX_RETRY_DELAY: float = 1.0
    OUTBOX_RETRY_MAX_DELAY: float = 300.0
    #: A relay owns the rows it claimed this long; then another relay may send them again.
    #: Keep it above the relay's wait for acknowledgements (the producer's ``message.timeout.ms``).
    OUTBOX_LEASE_SECONDS: float = 60.0
    #: Seconds the relay after a commit waits for the broker's acknowledgement before it leaves
    #: the rows to the background relay (bounds what a request or task pays when Kafka is down).
    OUTBOX_COMMIT_WAIT: float = 0.25
    #: Sent outbox rows are deleted this many days after they were sent (by the bridges' message
    #: sweep); pending and dead rows never. 0 keeps them all.
    OUTBOX_RETENTION_DAYS: float = 7.0
    #: Rows one relay pass claims at most.
    OUTBOX_BATCH: int = 500
    #: How long a message for a listener that has not started yet is kept (a listener class
    #: may set ``buffer_ttl_seconds``).
    BUFFER_TTL_SECONDS: float = 3600.0
    #: Largest accepted message value, in bytes (bigger ones are dead letters / HTTP 413).
    MAX_MESSAGE_BYTES: int = 1024 * 1024
    #: A delivery whose worker stopped beating (HEARTBEAT_SECONDS) this long is handed out again;
    #: one still waiting in the queue is sent again after this long, then with backoff.
    DELIVERY_LEASE_SECONDS: float = 300.0
    #: Routed, unmatched and expired inbox rows are deleted this many days after they were
    #: received (the dedupe window); rows with open deliveries never. 0 keeps them all.
    INBOX_RETENTION_DAYS: float = 7.0
    #: Dead letters (invalid inbox rows) are deleted this many days after they were received.
    #: 0 keeps them all.
    INBOX_DEAD_LETTER_RETENTION_DAYS: float = 30.0
    #: Accepted for compatibility: the correlation table needs no chunking.
    MAX_CORRELETABLE_KEYS_IN_VALUES: int = 15000
    #: Celery queue for dagger's tasks (None = the project's default queue).
    CELERY_QUEUE: str | None = None
    #: Seconds ``GET health/`` keeps its broker and bridge answers (each opens a connection).
    HEALTH_CACHE_SECONDS: float = 2.0
    # -- observability: metrics and traces (docs/observability.md) --
    #: Count workflow and node events for Prometheus when ``prometheus_client`` is installed
    #: (the ``metrics`` extra). Read when the app starts.
    METRICS: bool = True
    #: A bearer token that may read the metrics endpoint (``Authorization: Bearer <token>``),
    #: besides staff users; None: staff users only.
    METRICS_TOKEN: str | None = None
    #: A workflow EXECUTING longer than this many seconds since it was submitted counts as stuck.
    METRICS_STUCK_SECONDS: float = 3600.0
    #: A pending timer this many seconds past its due time counts as late (None: twice
    #: TRIGGER_INTERVAL, the longest a timer waits for the regular sweep, doubled).
    METRICS_LATE_TIMER_SECONDS: float | None = None
    #: Each backlog gauge counts at most this many rows per scrape (the gauge then reads the limit).
    METRICS_COUNT_LIMIT: int = 10_000
    #: Trace Celery tasks, bridge batches and outbox sends with OpenTelemetry when
    #: ``opentelemetry-api`` is installed (the ``tracing`` extra). Read when the app starts.
    TRACING: bool = True


_OVERRIDE_NAMES = {
    "trigger_interval": "TRIGGER_INTERVAL",
    "max_tasks_per_trigger": "MAX_TASKS_PER_TRIGGER",
    "restart_tasks_on_boot": "RESTART_TASKS_ON_BOOT",
    "delete_workflow_on_complete": "DELETE_WORKFLOW_ON_COMPLETE",
    "task_update_topic": "TASK_UPDATE_TOPIC",
    "task_update_callbacks": "TASK_UPDATE_CALLBACKS",
    "max_correletable_keys_in_values": "MAX_CORRELETABLE_KEYS_IN_VALUES",
}


def _no_overrides() -> Mapping[str, Any]:
    return {}


#: Reads the arguments of the current ``Dagger(...)`` that configure dagger_django
#: (``Dagger.overrides()``). The first ``Dagger(...)`` installs it; before, there are none.
_overrides_reader: Callable[[], Mapping[str, Any]] = _no_overrides


def read_overrides_from(reader: Callable[[], Mapping[str, Any]]) -> None:
    """Take constructor arguments from ``reader`` (called on every settings access)."""
    global _overrides_reader
    _overrides_reader = reader


class DaggerSettings:
    _names = frozenset(f.name for f in fields(Defaults))

    def __getattr__(self, name: str) -> Any:
        if name not in self._names:
            raise AttributeError(f"Unknown dagger_django setting: {name}")
        user = getattr(settings, "DAGGER", {}) or {}
        value = user.get(name, getattr(Defaults, name))
        engine = self.overrides()
        for arg, setting in _OVERRIDE_NAMES.items():
            if setting == name and arg in engine:
                value = engine[arg]
        return value

    def overrides(self) -> Mapping[str, Any]:
        """The arguments of the current ``Dagger(...)`` that configure dagger_django, by name
        (``Dagger.overrides()``; {} when none was constructed)."""
        return _overrides_reader()

    def callbacks(self) -> list[Any]:
        return [import_string(cb) if isinstance(cb, str) else cb for cb in self.TASK_UPDATE_CALLBACKS]


dagger_settings = DaggerSettings()
