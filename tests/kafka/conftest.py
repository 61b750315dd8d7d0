"""Fixtures of the Kafka tests: bridge processes, and a producer/consumer talking to the test broker.

The broker itself (``kafka_broker``) and the Celery worker are session fixtures of
``tests/conftest.py``. A bridge here is the real ``manage.py dagger_kafka_bridge`` command in its
own process, on the worker's test database and queue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ROOT
from ..tracing import TRACE_FILE_VARIABLE
from . import workflows as w

BRIDGE_STOP_TIMEOUT = 20.0


@dataclass
class BridgeProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    group: str
    #: Where the bridge writes its finished spans (tests/tracing.py).
    trace_file: Path | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(bridge log unreadable: {exc})"

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def assert_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(
                f"the bridge exited with {self.proc.returncode}; its log ends with:\n{self.log_tail()}"
            )

    def wait_assigned(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "bridge: assigned" not in self.log():
            self.assert_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"the bridge got no partition within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=BRIDGE_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


def start_bridge(
    worker: Any,
    broker: Any,
    log_dir: Path,
    *args: str,
    group: str | None = None,
    env: dict[str, str] | None = None,
) -> BridgeProcess:
    """``manage.py dagger_kafka_bridge`` on the worker's database and queue."""
    from django.conf import settings

    group = group or f"test-bridge-{uuid.uuid4().hex[:8]}"
    log_path = log_dir / f"bridge-{group}-{uuid.uuid4().hex[:4]}.log"
    trace_file = log_path.with_suffix(".spans.jsonl")
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
        "DATABASE_URL": worker.database_url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_QUEUE": worker.queue,
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        TRACE_FILE_VARIABLE: str(trace_file),
        # One host: the bridge counts into the worker's directory (docs/observability.md).
        **(
            {"PROMETHEUS_MULTIPROC_DIR": str(worker.metrics_dir)}
            if getattr(worker, "metrics_dir", None)
            else {}
        ),
        **broker.env,
        **(env or {}),
    }
    argv = [
        sys.executable,
        "manage.py",
        "dagger_kafka_bridge",
        "--import",
        "tests.kafka.workflows",
        "--group-id",
        group,
        "--poll-timeout",
        "0.2",
        "--sweep-interval",
        "1",
        *args,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    return BridgeProcess(proc=proc, log_path=log_path, group=group, trace_file=trace_file)


@pytest.fixture(autouse=True)
def _forget_template_versions() -> None:
    """The engine caches template version rows per process; transactional tests delete them."""
    from dagger_django.engine import services

    cache = getattr(services, "_VERSIONS", None)
    if cache is not None:
        cache.clear()


@pytest.fixture(scope="session")
def kafka_topics(kafka_broker: Any) -> Any:
    kafka_broker.create_topics([*w.TOPICS, w.CRASH_TOPIC], partitions=2)
    return kafka_broker


@pytest.fixture(scope="session")
def bridge(
    celery_worker_process: Any, kafka_topics: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeProcess]:
    """One bridge for the session, on every test topic except the crash test's."""
    process = start_bridge(
        celery_worker_process,
        kafka_topics,
        tmp_path_factory.mktemp("bridge"),
        "--topics",
        ",".join(w.TOPICS),
    )
    try:
        process.wait_assigned()
        yield process
    finally:
        code = process.stop()
        if code != 0:
            print(
                f"\nthe session bridge exited with {code}; log tail:\n{process.log_tail()}", file=sys.stderr
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the bridge's log to failing tests that used it."""
    report = yield
    if report.when == "call" and report.failed and "bridge" in getattr(item, "fixturenames", ()):
        process = item.funcargs.get("bridge") if hasattr(item, "funcargs") else None
        if process is not None:
            report.sections.append(("bridge log (tail)", process.log_tail()))
    return report


class KafkaClient:
    """Produces and reads messages on the test broker as the 'other services' would."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Producer

        self.bootstrap = bootstrap
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 0, "message.max.bytes": 4_000_000}
        )

    def send(
        self, topic: str, value: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.producer.produce(topic, value=raw, key=key, headers=list((headers or {}).items()))
        self.producer.flush(10)

    def committed_to_end(self, group: str, topic: str) -> bool:
        """Whether ``group`` has committed offsets up to the end of every partition of ``topic``."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            for tp in committed:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
                if high > 0 and tp.offset < high:
                    return False
            return True
        finally:
            consumer.close()

    def read(self, topic: str, match: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        """The first message of ``topic`` (from its beginning) that ``match`` accepts."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "test-reader"})
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = sorted(metadata.topics[topic].partitions)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is not None and message.error() is None and match(message):
                    return message
            pytest.fail(f"no matching message on {topic} within {timeout:.0f}s")
        finally:
            consumer.close()


@pytest.fixture(scope="session")
def kafka(kafka_topics: Any) -> KafkaClient:
    return KafkaClient(kafka_topics.bootstrap)
