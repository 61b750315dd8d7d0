"""``manage.py dagger_kafka_bridge``: consume the listener topics and route their messages.

Run one or more (one consumer group; scale up to the number of partitions). See docs/bridge.md.
"""

from __future__ import annotations

import importlib
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


def _topics(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    topics = [t.strip() for value in values for t in value.split(",") if t.strip()]
    return topics or None


class Command(BaseCommand):
    help = (
        "Consume every topic a registered listener template waits on (or --topics), route each "
        "batch of messages in one database transaction, then commit the Kafka offsets. SIGTERM "
        "finishes the batch in hand and exits. Also runs the message sweep every --sweep-interval "
        "seconds (buffer expiry, lost deliveries, inbox retention, unsent outbox rows)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--topics",
            action="append",
            help="topics to consume (repeat or comma-separate); default: every listener template's topic",
        )
        parser.add_argument("--group-id", help="consumer group (default DAGGER['KAFKA_GROUP_ID'])")
        parser.add_argument(
            "--once", action="store_true", help="exit once every assigned partition has been read to its end"
        )
        parser.add_argument("--max-messages", type=int, help="exit after this many messages")
        parser.add_argument("--batch-size", type=int, default=500, help="messages per poll and transaction")
        parser.add_argument("--poll-timeout", type=float, default=0.5, help="seconds one poll waits")
        parser.add_argument(
            "--sweep-interval", type=float, default=5.0, help="seconds between message sweeps (0: none)"
        )
        parser.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            help="import this module first (templates registered outside an app's workflows module)",
        )
        parser.add_argument(
            "--sweep-only",
            action="store_true",
            help="run only the message sweep, without Kafka (for deployments that route over HTTP)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from dagger_django.kafka.bridge import Bridge, BridgeError, sweep_forever

        for module in options["imports"]:
            importlib.import_module(module)
        if options.get("max_messages") is not None and options["max_messages"] < 1:
            raise CommandError("--max-messages must be at least 1")
        if options["sweep_only"]:
            stopping: list[bool] = []
            signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))
            signal.signal(signal.SIGINT, lambda *a: stopping.append(True))
            sweep_forever(
                interval=max(options["sweep_interval"], 0.1),
                once=options["once"],
                stop=lambda: bool(stopping),
            )
            return
        bridge = Bridge(
            topics=_topics(options.get("topics")),
            group_id=options.get("group_id"),
            batch_size=options["batch_size"],
            poll_timeout=options["poll_timeout"],
            once=options["once"],
            max_messages=options.get("max_messages"),
            sweep_interval=options["sweep_interval"],
        )
        bridge.install_signal_handlers()
        try:
            stats = bridge.run()
        except BridgeError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(stats.summary())
