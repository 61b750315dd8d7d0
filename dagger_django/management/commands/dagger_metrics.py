"""``manage.py dagger_metrics``: serve this host's metrics to Prometheus (docs/observability.md)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Serve the metrics every process of this host counted into PROMETHEUS_MULTIPROC_DIR (Celery "
        "workers, bridges, web processes), with the backlog gauges, for a host that has no web "
        "process to scrape. No authentication: bind it to an address only Prometheus reaches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=9100, help="port to listen on (default 9100)")
        parser.add_argument(
            "--no-backlog",
            action="store_true",
            help="leave out the backlog gauges (fleet-wide: one host, or the web endpoint, serves them)",
        )

    def handle(self, *args: Any, addr: str, port: int, no_backlog: bool = False, **options: Any) -> None:
        from dagger_django.observability import metrics

        if not metrics.available():
            self.stderr.write("dagger_metrics needs prometheus_client: install the metrics extra")
            raise SystemExit(2)
        path = metrics.multiprocess_dir()
        if not path:
            self.stderr.write(
                "set PROMETHEUS_MULTIPROC_DIR to the directory this host's processes count into"
            )
            raise SystemExit(2)
        server = metrics.serve(addr=addr, port=port, path=path, backlog=not no_backlog)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        self.stdout.write(f"serving the metrics of {path} on http://{addr}:{port}/", ending="\n")
        self.stdout.flush()
        while not stop.wait(1.0):
            pass
        server.shutdown()
