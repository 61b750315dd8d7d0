"""System checks: incoherent settings are reported at start-up with a hint, not at first use."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string


@register("dagger_django")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from .conf import dagger_settings

    problems: list[Any] = []
    try:
        import_string(dagger_settings.DISPATCHER)
    except ImportError as exc:
        problems.append(
            Error(
                f"DAGGER['DISPATCHER'] cannot be imported: {exc}",
                hint="Use 'dagger_django.adapters.celery.CeleryDispatcher' (default).",
                id="dagger_django.E001",
            )
        )
    if int(dagger_settings.MAX_RUNTIME_PARAMETERS_BYTES) <= 0:
        problems.append(
            Error(
                "DAGGER['MAX_RUNTIME_PARAMETERS_BYTES'] must be a positive number of bytes.",
                id="dagger_django.E002",
            )
        )
    if int(dagger_settings.INLINE_STEPS) < 0 or float(dagger_settings.INLINE_SECONDS) < 0:
        problems.append(
            Error(
                "DAGGER['INLINE_STEPS'] and ['INLINE_SECONDS'] must not be negative.", id="dagger_django.E003"
            )
        )
    if float(dagger_settings.TRIGGER_INTERVAL) <= 0:
        problems.append(Error("DAGGER['TRIGGER_INTERVAL'] must be positive.", id="dagger_django.E004"))
    problems.extend(_time_problems(dagger_settings))
    problems.extend(_celery_app_problems(dagger_settings))
    for cb in dagger_settings.TASK_UPDATE_CALLBACKS:
        if isinstance(cb, str):
            try:
                import_string(cb)
            except ImportError as exc:
                problems.append(
                    Error(f"Task update callback {cb!r} cannot be imported: {exc}", id="dagger_django.E005")
                )
    return problems


def _time_problems(dagger_settings: Any) -> list[Any]:
    """Settings of timers and recovery (docs/time.md)."""
    problems: list[Any] = []
    if int(dagger_settings.MAX_TASKS_PER_TRIGGER) < 1:
        problems.append(
            Error(
                "DAGGER['MAX_TASKS_PER_TRIGGER'] must be at least 1.",
                hint="It caps the timers one sweep fires; the default is 2000.",
                id="dagger_django.E006",
            )
        )
    if int(dagger_settings.TIMER_BATCH) < 1:
        problems.append(
            Error(
                "DAGGER['TIMER_BATCH'] must be at least 1.",
                hint="Due timers a sweep fires per transaction; the default is 50.",
                id="dagger_django.E009",
            )
        )
    if float(dagger_settings.LEASE_SECONDS) <= 0:
        problems.append(
            Error(
                "DAGGER['LEASE_SECONDS'] must be positive.",
                hint="Seconds after which a SUBMITTED/EXECUTING node is handed out again; default 300.",
                id="dagger_django.E007",
            )
        )
    if float(dagger_settings.RECOVERY_INTERVAL) < 0:
        problems.append(
            Error("DAGGER['RECOVERY_INTERVAL'] must be 0 (off) or positive.", id="dagger_django.E008")
        )
    problems.extend(_lease_problems(dagger_settings))
    interval = float(dagger_settings.TRIGGER_INTERVAL)
    if interval > 0 and (interval < 1 or not interval.is_integer()):
        problems.append(
            Warning(
                f"DAGGER['TRIGGER_INTERVAL'] = {interval:g}: celery-beat runs the sweep every "
                f"{max(1, round(interval))} s (whole seconds).",
                hint="Timers due soon still fire on time: they are sent with a Celery countdown.",
                id="dagger_django.W001",
            )
        )
    return problems


# -- leases, heartbeats and the broker's redelivery (ids E030-E039, W030-W039) -----------------------
#: Transports that hand an unacknowledged message out again after a visibility timeout.
VISIBILITY_TRANSPORTS = frozenset({"redis", "rediss", "sentinel", "sqs"})
#: Celery's default visibility timeout for those transports, in seconds.
DEFAULT_VISIBILITY_TIMEOUT = 3600.0


def visibility_margin(dagger_settings: Any) -> float:
    """What the visibility timeout must exceed the lease by: countdown messages (a timer's, up to
    two sweep intervals ahead) are held unacknowledged by a worker until due."""
    return max(60.0, 2 * float(dagger_settings.TRIGGER_INTERVAL))


def _lease_problems(dagger_settings: Any) -> list[Any]:
    problems: list[Any] = []
    lease = float(dagger_settings.LEASE_SECONDS)
    beat = float(dagger_settings.HEARTBEAT_SECONDS)
    if beat <= 0 or (lease > 0 and 3 * beat >= lease):
        problems.append(
            Error(
                f"DAGGER['HEARTBEAT_SECONDS'] = {beat:g} must be positive and under a third of "
                f"LEASE_SECONDS ({lease:g}).",
                hint="A running task refreshes its lease this often; three missed beats mark it dead.",
                id="dagger_django.E030",
            )
        )
    delivery_lease = float(dagger_settings.DELIVERY_LEASE_SECONDS)
    if beat > 0 and delivery_lease > 0 and 3 * beat >= delivery_lease:
        problems.append(
            Error(
                f"DAGGER['HEARTBEAT_SECONDS'] = {beat:g} must be under a third of "
                f"DELIVERY_LEASE_SECONDS ({delivery_lease:g}).",
                hint="A running on_message refreshes its delivery's claim this often; the message "
                "sweep hands out again a claim not refreshed for DELIVERY_LEASE_SECONDS.",
                id="dagger_django.E031",
            )
        )
    timeout = _visibility_timeout()
    margin = visibility_margin(dagger_settings)
    if timeout is not None and timeout < lease + margin:
        problems.append(
            Warning(
                f"The broker's visibility_timeout ({timeout:g} s) is shorter than DAGGER['LEASE_SECONDS'] "
                f"+ {margin:g} s: the broker hands the message of a task still running (and of a "
                "timer's countdown) to a second worker.",
                hint="Set CELERY_BROKER_TRANSPORT_OPTIONS = {'visibility_timeout': ...} above the "
                "lease plus the margin (docs/configuration.md).",
                id="dagger_django.W030",
            )
        )
    problems.extend(_connection_reuse_problems())
    return problems


def _connection_reuse_problems() -> list[Any]:
    """W031: Celery's Django fixup closes every database connection before and after each task
    unless ``CELERY_DB_REUSE_MAX`` is set, so a worker connects anew for every task however long
    ``CONN_MAX_AGE`` is (measured: two new PostgreSQL sessions per 3-step workflow)."""
    from django.conf import settings

    try:
        from celery import current_app

        reuse = current_app.conf.get("CELERY_DB_REUSE_MAX")
    except Exception:  # noqa: BLE001 - no Celery app configured: nothing to check
        return []
    persistent = [alias for alias, conf in settings.DATABASES.items() if conf.get("CONN_MAX_AGE", 0) != 0]
    if reuse is not None or not persistent:
        return []
    return [
        Warning(
            "Celery workers close the database connection before and after every task "
            "(CELERY_DB_REUSE_MAX is not set), so each dagger task opens a new connection although "
            f"CONN_MAX_AGE keeps them ({', '.join(persistent)}).",
            hint="Set app.conf.CELERY_DB_REUSE_MAX = 1000 on your Celery app (docs/configuration.md, "
            '"Database connections in workers"); dagger closes a failed or expired connection after '
            "each task.",
            id="dagger_django.W031",
        )
    ]


def _visibility_timeout() -> float | None:
    """The current Celery app's visibility timeout, if its transport has one."""
    try:
        from celery import current_app

        conf = current_app.conf
        url = str(conf.broker_url or "")
    except Exception:  # noqa: BLE001 - no Celery app configured: nothing to compare
        return None
    if url.partition("://")[0].partition("+")[0] not in VISIBILITY_TRANSPORTS:
        return None
    options = conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))


# -- the project's Celery app (ids E050-E059, W050-W059) -------------------------------------------
#: Where Celery sends when no broker is configured (kombu's default transport and host).
CELERY_DEFAULT_BROKER = "amqp://guest@localhost//"
_CELERY_APP_HINT = (
    'Create <project>/celery.py with app = Celery("<project>"), '
    'app.config_from_object("django.conf:settings", namespace="CELERY") and app.autodiscover_tasks(), '
    "import it in <project>/__init__.py (from .celery import app as celery_app), and set "
    "CELERY_BROKER_URL in settings (docs/install.md)."
)


def _celery_app_problems(dagger_settings: Any) -> list[CheckMessage]:
    """E050/W050: the Celery app dagger sends through is not the project's, or has no broker;
    E051: ``READY_LIST`` is True with a broker that is not Redis.

    A project that never made a Celery app of its own (``celery.py`` and its import in the
    package's ``__init__.py``) sends through Celery's fallback app, which reads no ``CELERY_*``
    setting; with no broker URL either, every send goes to ``amqp://guest@localhost//`` and the
    first dispatch fails after its commit. Eager mode and other dispatchers need no broker.
    """
    try:
        from celery import _state, current_app

        from .adapters.celery import CeleryDispatcher

        dispatcher = import_string(dagger_settings.DISPATCHER)
        if not (isinstance(dispatcher, type) and issubclass(dispatcher, CeleryDispatcher)):
            return []
        app = current_app._get_current_object()
        conf = app.conf
        if conf.task_always_eager:
            return []
        url = conf.broker_write_url
    except Exception:  # noqa: BLE001 - E001 reports a dispatcher that cannot be imported
        return []
    fallback = app is _state.default_app and app.main == "default"
    if not url:
        return [
            Error(
                "No Celery broker is configured"
                + (" and no Celery app of the project is loaded" if fallback else "")
                + f": dagger's sends go to Celery's default broker {CELERY_DEFAULT_BROKER} and "
                "workflows never start.",
                hint=_CELERY_APP_HINT
                if fallback
                else "Set CELERY_BROKER_URL in settings (your Celery app reads the CELERY_ namespace "
                'of Django\'s settings: config_from_object("django.conf:settings", namespace="CELERY")); '
                "docs/install.md.",
                id="dagger_django.E050",
            )
        ]
    if dagger_settings.READY_LIST is True and url.split("://", 1)[0] not in ("redis", "rediss"):
        return [
            Error(
                "DAGGER['READY_LIST'] is True but the Celery broker is not Redis: the ready list "
                "lives in the broker's Redis database.",
                hint="Leave READY_LIST unset (None: used where the broker is Redis) or set it to False.",
                id="dagger_django.E051",
            )
        ]
    if fallback:
        return [
            Warning(
                "No Celery app of the project is loaded: dagger sends through Celery's fallback app, "
                "which reads none of the CELERY_ settings (only the CELERY_BROKER_URL environment "
                "variable).",
                hint=_CELERY_APP_HINT,
                id="dagger_django.W050",
            )
        ]
    return []


# -- Kafka issue: messages in and out (ids E020-E029) ------------------------------------------------
@register("dagger_django")
def check_messaging_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from .conf import dagger_settings

    problems: list[Any] = []
    for name in ("KAFKA", "KAFKA_CONSUMER", "KAFKA_PRODUCER"):
        value = getattr(dagger_settings, name)
        if value is not None and not isinstance(value, dict):
            problems.append(
                Error(
                    f"DAGGER['{name}'] must be a dict of librdkafka settings, not {type(value).__name__}.",
                    hint='For example {"bootstrap.servers": "kafka:9092"}.',
                    id="dagger_django.E020",
                )
            )
    relay = dagger_settings.OUTBOX_RELAY
    if relay:
        try:
            import_string(relay)
        except ImportError as exc:
            problems.append(
                Error(
                    f"DAGGER['OUTBOX_RELAY'] cannot be imported: {exc}",
                    hint="Use 'dagger_django.kafka.producer.KafkaRelay' (default; needs confluent-kafka) or None.",
                    id="dagger_django.E021",
                )
            )
    factory = dagger_settings.KAFKA_CONSUMER_FACTORY
    if factory:
        try:
            import_string(factory)
        except ImportError as exc:
            problems.append(
                Error(
                    f"DAGGER['KAFKA_CONSUMER_FACTORY'] cannot be imported: {exc}",
                    hint="A dotted path to a callable taking the consumer's settings, or None "
                    "(default: confluent_kafka.Consumer).",
                    id="dagger_django.E025",
                )
            )
    for name in ("BUFFER_TTL_SECONDS", "MAX_MESSAGE_BYTES", "DELIVERY_LEASE_SECONDS"):
        if float(getattr(dagger_settings, name)) <= 0:
            problems.append(Error(f"DAGGER['{name}'] must be positive.", id="dagger_django.E022"))
    for name in ("INBOX_RETENTION_DAYS", "INBOX_DEAD_LETTER_RETENTION_DAYS", "OUTBOX_RETENTION_DAYS"):
        if float(getattr(dagger_settings, name)) < 0:
            problems.append(
                Error(f"DAGGER['{name}'] must be 0 (keep all) or positive.", id="dagger_django.E023")
            )
    if not dagger_settings.KAFKA_GROUP_ID:
        problems.append(Error("DAGGER['KAFKA_GROUP_ID'] must not be empty.", id="dagger_django.E024"))
    problems.extend(_outbox_problems())
    return problems


#: The longest the background relay waits for the broker per round (kafka.producer.FLUSH_TIMEOUT).
_RELAY_WAIT_SECONDS = 15.0


def _outbox_problems() -> list[CheckMessage]:
    """The outbox relay's settings (ids E040-E049)."""
    from .conf import dagger_settings

    problems: list[CheckMessage] = []
    for name in ("OUTBOX_MAX_ATTEMPTS", "OUTBOX_BATCH"):
        if int(getattr(dagger_settings, name)) < 1:
            problems.append(Error(f"DAGGER['{name}'] must be at least 1.", id="dagger_django.E040"))
    for name in ("OUTBOX_RETRY_DELAY", "OUTBOX_RETRY_MAX_DELAY", "OUTBOX_COMMIT_WAIT"):
        if float(getattr(dagger_settings, name)) < 0:
            problems.append(Error(f"DAGGER['{name}'] must not be negative.", id="dagger_django.E041"))
    lease = float(dagger_settings.OUTBOX_LEASE_SECONDS)
    if lease <= max(_RELAY_WAIT_SECONDS, float(dagger_settings.OUTBOX_COMMIT_WAIT)):
        problems.append(
            Error(
                f"DAGGER['OUTBOX_LEASE_SECONDS'] ({lease:g}) must be longer than the relay's wait for the "
                f"broker ({_RELAY_WAIT_SECONDS:g}s), or a second relay sends the rows again meanwhile.",
                hint="Keep the default (60).",
                id="dagger_django.E042",
            )
        )
    return problems


# -- metrics and traces (ids E060-E069; docs/observability.md) -----------------------------------------
@register("dagger_django")
def check_observability_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E060: a metrics setting out of range; E061: ``PROMETHEUS_MULTIPROC_DIR`` names no directory
    (prometheus_client cannot count there: the metrics stay off in this process)."""
    import os

    from .conf import dagger_settings

    problems: list[CheckMessage] = []
    if int(dagger_settings.METRICS_COUNT_LIMIT) < 1:
        problems.append(Error("DAGGER['METRICS_COUNT_LIMIT'] must be at least 1.", id="dagger_django.E060"))
    if float(dagger_settings.METRICS_STUCK_SECONDS) <= 0:
        problems.append(Error("DAGGER['METRICS_STUCK_SECONDS'] must be positive.", id="dagger_django.E060"))
    late = dagger_settings.METRICS_LATE_TIMER_SECONDS
    if late is not None and float(late) < 0:
        problems.append(
            Error(
                "DAGGER['METRICS_LATE_TIMER_SECONDS'] must not be negative.",
                hint="None: twice TRIGGER_INTERVAL.",
                id="dagger_django.E060",
            )
        )
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if dagger_settings.METRICS and path and not os.path.isdir(path):
        problems.append(
            Error(
                f"PROMETHEUS_MULTIPROC_DIR ({path}) is not a directory: no process can count its metrics there.",
                hint="Create it (empty) before the host's processes start, or unset the variable.",
                id="dagger_django.E061",
            )
        )
    return problems
