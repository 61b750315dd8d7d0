"""dagger's django-celery-beat entries: one per purpose, never one per timer.

- ``dagger_django: timer sweep`` runs ``dagger_django.sweep_timers`` every ``TRIGGER_INTERVAL``
  seconds: it fires due timers and sends the ones due before the next sweep with a countdown;
- ``dagger_django: recovery sweep`` runs ``dagger_django.recover_nodes`` every
  ``RECOVERY_INTERVAL`` seconds (disabled when it is 0).

:func:`beat_setup` creates or updates them and is idempotent: rows that already match are not
written, so a running beat does not reload its schedule for nothing. It runs after every
``migrate`` (a ``post_migrate`` receiver, unless ``DAGGER['BEAT_AUTO_SETUP']`` is False) and from
``manage.py dagger_setup_beat``. Beat schedules whole seconds: an interval below one second runs
every second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from .conf import dagger_settings

logger = logging.getLogger("dagger_django.beat")

SWEEP_TASK = "dagger_django.sweep_timers"
RECOVER_TASK = "dagger_django.recover_nodes"
SWEEP_ENTRY = "dagger_django: timer sweep"
RECOVER_ENTRY = "dagger_django: recovery sweep"


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    every: int
    enabled: bool
    queue: str | None


def wanted_entries() -> list[Entry]:
    sweep = _whole_seconds(dagger_settings.TRIGGER_INTERVAL)
    recovery_interval = float(dagger_settings.RECOVERY_INTERVAL)
    recover = _whole_seconds(recovery_interval or 60)
    main_queue = dagger_settings.CELERY_QUEUE
    return [
        Entry(SWEEP_ENTRY, SWEEP_TASK, sweep, True, dagger_settings.TIMER_QUEUE or main_queue),
        Entry(RECOVER_ENTRY, RECOVER_TASK, recover, recovery_interval > 0, main_queue),
    ]


def _whole_seconds(value: Any) -> int:
    return max(1, round(float(value)))


def beat_setup(*, using: str = DEFAULT_DB_ALIAS) -> list[tuple[str, str]]:
    """Create or update dagger's beat entries. Returns ``(entry name, "created" | "updated" |
    "unchanged")`` for each."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    results: list[tuple[str, str]] = []
    for entry in wanted_entries():
        queue = entry.queue or None
        schedule = (
            IntervalSchedule.objects.using(using)
            .filter(every=entry.every, period=IntervalSchedule.SECONDS)
            .order_by("pk")
            .first()
        )
        if schedule is None:
            schedule = IntervalSchedule.objects.using(using).create(
                every=entry.every, period=IntervalSchedule.SECONDS
            )
        wanted = {
            "task": entry.task,
            "interval_id": schedule.pk,
            "crontab_id": None,
            "solar_id": None,
            "clocked_id": None,
            "enabled": entry.enabled,
            # No expiry: behind a backlog an expiring sweep would never run at all. A sweep
            # that finds nothing due costs one query.
            "expire_seconds": None,
            "queue": queue,
            "one_off": False,
        }
        row = PeriodicTask.objects.using(using).filter(name=entry.name).first()
        if row is None:
            PeriodicTask(name=entry.name, description=_DESCRIPTIONS[entry.task], **wanted).save(using=using)
            results.append((entry.name, "created"))
            continue
        changed = [field for field, value in wanted.items() if getattr(row, field) != value]
        if changed:
            for field in changed:
                setattr(row, field, wanted[field])
            row.save(using=using)
            results.append((entry.name, "updated"))
        else:
            results.append((entry.name, "unchanged"))
    return results


_DESCRIPTIONS = {
    SWEEP_TASK: "Fires dagger's due timers (triggers, interval polls, monitors, deadlines, retries).",
    RECOVER_TASK: "Hands dagger tasks left SUBMITTED/EXECUTING past their lease to a worker again.",
}


def on_post_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """``post_migrate`` receiver: register the beat entries once the tables exist."""
    from django.apps import apps

    if not dagger_settings.BEAT_AUTO_SETUP or not apps.is_installed("django_celery_beat"):
        return
    from django_celery_beat.models import PeriodicTask

    if PeriodicTask._meta.db_table not in connections[using].introspection.table_names():
        return  # migrated backwards, or only some apps: nothing to register into
    for name, outcome in beat_setup(using=using):
        if outcome != "unchanged":
            logger.debug("beat entry %r %s", name, outcome)


__all__ = ["beat_setup", "on_post_migrate", "wanted_entries"]
