"""``manage.py dagger_setup_beat``: create or update dagger's django-celery-beat entries."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DEFAULT_DB_ALIAS


class Command(BaseCommand):
    help = (
        "Register dagger's celery-beat entries (the timer sweep every DAGGER['TRIGGER_INTERVAL'] "
        "seconds, the recovery sweep every DAGGER['RECOVERY_INTERVAL'] seconds). Idempotent. "
        "migrate does the same unless DAGGER['BEAT_AUTO_SETUP'] is False."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="database alias")

    def handle(self, *args: Any, database: str = DEFAULT_DB_ALIAS, **options: Any) -> None:
        from dagger_django.beat import beat_setup, wanted_entries

        every = {e.name: e for e in wanted_entries()}
        for name, outcome in beat_setup(using=database):
            entry = every[name]
            state = "" if entry.enabled else ", disabled"
            self.stdout.write(f"{name}: {outcome} ({entry.task} every {entry.every} s{state})")
