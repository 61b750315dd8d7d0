"""``manage.py dagger_recover``: one recovery sweep, in this process."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Hand tasks left SUBMITTED or EXECUTING for longer than the lease (DAGGER['LEASE_SECONDS']) "
        "to the Celery workers again: after a worker was killed or the broker lost messages."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--lease", type=float, default=None, help="seconds without a change (default: LEASE_SECONDS)"
        )
        parser.add_argument("--limit", type=int, default=None, help="recover at most this many tasks")

    def handle(
        self, *args: Any, lease: float | None = None, limit: int | None = None, **options: Any
    ) -> None:
        from dagger_django.engine import recovery

        if lease is not None and lease <= 0:
            self.stderr.write("--lease must be positive")
            raise SystemExit(2)
        recovered = recovery.nodes_recover(lease_seconds=lease, limit=limit)
        self.stdout.write(f"recovered {recovered} task(s)")
