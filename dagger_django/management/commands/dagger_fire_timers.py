"""``manage.py dagger_fire_timers``: one timer sweep, in this process (cron, debugging)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Fire the timers that are due now (at most --limit, default DAGGER['MAX_TASKS_PER_TRIGGER']), "
        "DAGGER['TIMER_BATCH'] per transaction, exactly like one celery-beat sweep. The trigger and interval "
        "tasks they make ready run in this process (DAGGER['TIMER_RUN_INLINE'], for INLINE_SECONDS); the rest "
        "of the work they start is sent to the Celery workers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=None, help="fire at most this many timers")
        parser.add_argument(
            "--no-upcoming",
            action="store_true",
            help="do not send the timers due before the next sweep with a Celery countdown",
        )

    def handle(self, *args: Any, limit: int | None = None, no_upcoming: bool = False, **options: Any) -> None:
        from dagger_django.engine import timers

        if limit is not None and limit < 1:
            self.stderr.write("--limit must be at least 1")
            raise SystemExit(2)
        fired = timers.timers_fire_due(limit=limit)
        upcoming = 0 if no_upcoming else timers.timers_dispatch_upcoming()
        self.stdout.write(f"fired {fired} timer(s); sent {upcoming} upcoming timer(s) with a countdown")
