"""``manage.py dagger_outbox``: the outbox's state, its background relay, and requeuing dead rows."""

from __future__ import annotations

import signal
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections


class Command(BaseCommand):
    help = (
        "status (default): count pending and dead outbox messages (--fail-if-dead exits 1 when "
        "any is dead, for monitoring). relay: send pending messages until stopped (SIGTERM), the "
        "background relay for deployments without a Kafka bridge; --once makes one pass. "
        "requeue: put dead messages (ids, or --all) back to pending, their attempts reset."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", nargs="?", choices=["status", "relay", "requeue"], default="status")
        parser.add_argument("ids", nargs="*", type=int, help="outbox message ids (requeue)")
        parser.add_argument("--all", action="store_true", help="requeue every dead message")
        parser.add_argument("--once", action="store_true", help="relay: one pass, then exit")
        parser.add_argument("--interval", type=float, default=5.0, help="relay: seconds between passes")
        parser.add_argument(
            "--grace",
            type=float,
            default=10.0,
            help="relay: leave rows younger than this to the after-commit relay",
        )
        parser.add_argument(
            "--fail-if-dead", action="store_true", help="status: exit 1 when a message is dead"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if options["ids"] and action != "requeue":
            raise CommandError("message ids go with 'requeue'")
        if action == "requeue":
            self._requeue(options["ids"], options["all"])
        elif action == "relay":
            self._relay(once=options["once"], interval=options["interval"], grace=options["grace"])
        else:
            self._status(fail_if_dead=options["fail_if_dead"])

    def _status(self, *, fail_if_dead: bool) -> None:
        from dagger_django.engine.outbox import outbox_counts

        counts = outbox_counts()
        oldest = counts.oldest_pending.isoformat() if counts.oldest_pending else "-"
        self.stdout.write(f"pending {counts.pending} (oldest {oldest})\ndead {counts.dead}")
        if fail_if_dead and counts.dead:
            raise CommandError(
                f"{counts.dead} outbox message(s) are dead; see the admin or 'dagger_outbox requeue'"
            )

    def _requeue(self, ids: list[int], every: bool) -> None:
        from dagger_django.engine.outbox import outbox_requeue

        if bool(ids) == every:
            raise CommandError("give outbox message ids, or --all (not both)")
        count = outbox_requeue(ids=None if every else ids)
        self.stdout.write(f"requeued {count} dead message(s)")

    def _relay(self, *, once: bool, interval: float, grace: float) -> None:
        from dagger_django.engine.outbox import get_relay, relay_pending

        if get_relay() is None:
            raise CommandError("DAGGER['OUTBOX_RELAY'] is None: nothing would send the messages")
        stopping: list[bool] = []
        if not once:
            signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))
            signal.signal(signal.SIGINT, lambda *a: stopping.append(True))
        total = 0
        while True:
            close_old_connections()
            try:
                total += relay_pending(grace_seconds=grace)
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried at the next one
                self.stderr.write(f"relay pass failed: {exc}")
            if once or stopping:
                break
            end = time.monotonic() + max(0.1, interval)
            while time.monotonic() < end and not stopping:
                time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            if stopping:
                break
        self.stdout.write(f"sent {total} message(s)")
