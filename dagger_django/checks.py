"""System checks: incoherent settings are reported at start-up with a hint, not at first use."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Warning, register
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
    for name in ("BUFFER_TTL_SECONDS", "MAX_MESSAGE_BYTES", "DELIVERY_LEASE_SECONDS"):
        if float(getattr(dagger_settings, name)) <= 0:
            problems.append(Error(f"DAGGER['{name}'] must be positive.", id="dagger_django.E022"))
    for name in ("INBOX_RETENTION_DAYS", "INBOX_DEAD_LETTER_RETENTION_DAYS"):
        if float(getattr(dagger_settings, name)) < 0:
            problems.append(
                Error(f"DAGGER['{name}'] must be 0 (keep all) or positive.", id="dagger_django.E023")
            )
    if not dagger_settings.KAFKA_GROUP_ID:
        problems.append(Error("DAGGER['KAFKA_GROUP_ID'] must not be empty.", id="dagger_django.E024"))
    return problems
