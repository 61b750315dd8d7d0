"""The processes of a fault campaign: workers, beats, bridges and a driver, on private services.

A :class:`Stack` is one campaign's world: its own PostgreSQL cluster, Redis and Tansu
(tests/faults/services.py), a migrated database, and an environment that points every process of
the demo project at them. Settings go through the real paths (``DAGGER_<NAME>`` environment
variables read by ``config/settings.py``, and ``tests.faults.settings`` for the few the demo
project does not read from the environment); nothing in the engine knows it is under test.
The workers are started like the suite's (tests/conftest.py) and answer the same readiness ping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, WORKER_TEST_MODULES, WorkerProcess, _stop
from tests.kafka.broker import FAST_GROUP

from . import workflows as fw
from .services import PrivateKafka, PrivatePostgres, PrivateRedis, PrivateS3

#: Real settings of the campaign runs: short leases and sweeps so recovery is measured in seconds.
SETTINGS = {
    "DAGGER_LEASE_SECONDS": "4",
    # Under a third of the lease (check E030): a running task's lease stays fresh.
    "DAGGER_HEARTBEAT_SECONDS": "1",
    "DAGGER_DELIVERY_LEASE_SECONDS": "4",
    "DAGGER_RECOVERY_INTERVAL": "1",
    "DAGGER_TRIGGER_INTERVAL": "1",
}


@dataclass
class Proc:
    """A campaign process (beat, bridge, driver) with its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"({self.log_path} unreadable: {exc})"

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        """Until ``text`` is in the log (the process is ready), or fail with the log's tail."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} never logged {text!r}; its log ends with:\n{self.log()[-3000:]}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the process and everything it started."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


@dataclass
class Stack:
    """Private services, the campaign's database and the processes running on them."""

    base: Path
    pg: PrivatePostgres
    redis: PrivateRedis
    kafka: PrivateKafka
    database_url: str
    queue: str = field(default_factory=lambda: f"faults-{uuid.uuid4().hex[:8]}")
    workers: list[WorkerProcess] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    generation: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    _app: Any = None

    # -- environment ------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.faults.settings",
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.redis.url,
            "CELERY_QUEUE": self.queue,
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "KAFKA_CONSUMER_CONFIG": json.dumps(FAST_GROUP),
            # Shorter than librdkafka's defaults, so a producer notices a restarted broker soon.
            "KAFKA_PRODUCER_CONFIG": json.dumps({"linger.ms": 5}),
            **SETTINGS,
            **self.settings,
        }

    @property
    def app(self) -> Any:
        """A Celery client for the readiness ping of the workers (its connection is given per call)."""
        if self._app is None:
            from celery import Celery

            self._app = Celery("faults", broker=self.redis.url)
        return self._app

    def _spawn(self, name: str, argv: list[str], **extra: str) -> Proc:
        log_path = self.base / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env={**self.env, **extra}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        handle = Proc(name=name, proc=proc, log_path=log_path)
        self.procs.append(handle)
        return handle

    def manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    # -- processes ---------------------------------------------------------------------------------------
    def start_worker(self, concurrency: int = 2) -> WorkerProcess:
        """A worker like the suite's, tagged with a generation (the ledger says who ran what)."""
        self.generation += 1
        nodename = f"{self.queue}-{self.generation}@{socket.gethostname()}"
        log_path = self.base / f"worker-{self.generation}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "-l", "warning", "--pool=prefork",
            f"--concurrency={concurrency}", "-Q", self.queue, "-n", nodename,
            "--include", ",".join([*WORKER_TEST_MODULES, "tests.faults.workflows"]),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env={**self.env, "FAULTS_GENERATION": str(self.generation)},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(
            proc=proc, queue=self.queue, nodename=nodename, log_path=log_path, database_url=self.database_url
        )
        self.workers.append(worker)
        self._wait_ready(worker)
        return worker

    def _wait_ready(self, worker: WorkerProcess, timeout: float = 90.0) -> None:
        """Ping the worker through the private Redis until it answers (it consumes its queue then).

        Celery reads a CELERY_BROKER_URL of the environment before the broker given to an app, and
        ``make test`` sets one (the shared Redis): the pings run with it pointing at the private
        Redis, so the app's connection pool, made at the first ping, is bound there.
        """
        deadline = time.monotonic() + timeout
        previous = os.environ.get("CELERY_BROKER_URL")
        os.environ["CELERY_BROKER_URL"] = self.redis.url
        try:
            while time.monotonic() < deadline:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker {worker.nodename} exited:\n{worker.log_tail()}")
                if self.app.control.ping(destination=[worker.nodename], timeout=1.0):
                    return
        finally:
            if previous is None:
                os.environ.pop("CELERY_BROKER_URL", None)
            else:
                os.environ["CELERY_BROKER_URL"] = previous
        raise RuntimeError(
            f"worker {worker.nodename} did not answer within {timeout:.0f}s:\n{worker.log_tail()}"
        )

    def start_beat(self, name: str = "beat", *, wait: bool = True) -> Proc:
        """``celery beat`` with the database scheduler; with ``wait``, once it has sent a sweep."""
        schedule = self.base / f"{name}-{uuid.uuid4().hex[:4]}.schedule"
        argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "info", "--max-interval", "1"]
        beat = self._spawn(name, [*argv, "-s", str(schedule)])
        if wait:
            beat.wait_log("Sending due task dagger_django: timer sweep")
        return beat

    def start_bridge(self, topics: list[str], name: str = "bridge", *args: str, **extra: str) -> Proc:
        argv = [
            sys.executable, "manage.py", "dagger_kafka_bridge", "--import", "tests.faults.workflows",
            "--group-id", f"{self.queue}-bridge", "--topics", ",".join(topics), "--poll-timeout", "0.2",
            "--sweep-interval", "1", *args,
        ]  # fmt: skip
        return self._spawn(name, argv, LOG_LEVEL="INFO", **extra)

    def start_driver(self, *args: str, name: str = "driver") -> Proc:
        return self._spawn(name, [sys.executable, "-m", "tests.faults.driver", *args])

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.alive():
                proc.stop()
        for worker in self.workers:
            if worker.proc.poll() is None:
                _stop(worker)
            else:
                try:  # pool processes of a worker whose main process was killed
                    os.killpg(worker.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    # -- reading the outcome --------------------------------------------------------------------------
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` on the campaign database (a fresh connection: services restart)."""
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            return list(conn.execute(sql, params).fetchall())

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def statuses(self) -> dict[str, int]:
        return dict(self.query("SELECT status, count(*) FROM dagger_django_workflow GROUP BY status"))  # type: ignore[arg-type]

    def finished(self, expected: int) -> bool:
        """Whether at least ``expected`` workflows exist and every one of them has COMPLETED.

        Every workflow in the database counts, not ``expected`` completions: a workflow the driver's
        records do not count as created (a create the client saw fail, committed anyway) would
        otherwise let the count reach ``expected`` while another, still running, is left behind and
        read as stuck by the outcome taken right after.
        """
        total, done = self.query(
            "SELECT count(*), count(*) FILTER (WHERE status = 'COMPLETED') FROM dagger_django_workflow"
        )[0]
        return int(done) == int(total) >= expected

    def wait_finished(self, expected: int, timeout: float) -> float:
        """Seconds until :meth:`finished` (or the deadline: then it returns)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if self.finished(expected):
                    break
            except Exception:  # the database may be restarting
                pass
            time.sleep(0.5)
        return time.monotonic() - start


def _start_kafka(base: Path, storage: str | None) -> tuple[PrivateKafka, PrivateS3 | None]:
    """Tansu with the campaign's topics: in memory, or with ``storage="s3"`` on a private S3
    server started first (a durable broker: :meth:`PrivateKafka.stop` and ``start`` keep its data)."""
    if storage is None:
        kafka = PrivateKafka.create(base)
        s3 = None
    elif storage == "s3":
        s3 = PrivateS3.create(base)
        try:
            kafka = PrivateKafka.create(base, storage=s3.storage, env=s3.env)
        except BaseException:
            s3.destroy()
            raise
    else:
        raise ValueError(f"unknown Kafka storage {storage!r} (None or 's3')")
    kafka.broker.create_topics(fw.TOPICS, partitions=2)
    return kafka, s3


@contextmanager
def stack(
    base: Path, *, kafka_storage: str | None = None, settings: dict[str, str] | None = None
) -> Iterator[Stack]:
    """Private PostgreSQL, Redis and Tansu, a migrated database; everything removed at the end.

    ``kafka_storage="s3"`` keeps the broker's data on a private S3 server (a durable broker that
    survives its restart); by default it is in memory. ``settings`` override :data:`SETTINGS`
    (environment variables of every process).
    """
    base.mkdir(parents=True, exist_ok=True)
    pg = PrivatePostgres.create(base)
    redis = kafka = s3 = None
    try:
        database_url = pg.create_database("dagger_faults")
        redis = PrivateRedis.create(base)
        kafka, s3 = _start_kafka(base, kafka_storage)
        world = Stack(
            base=base, pg=pg, redis=redis, kafka=kafka, database_url=database_url, settings=settings or {}
        )
        world.manage("migrate", "-v", "0")
        world.execute(fw.LEDGER)
        try:
            yield world
        finally:
            world.stop_all()
    finally:
        for service in (kafka, s3, redis):
            if service is not None:
                service.destroy()
        pg.destroy()


class OrderService(threading.Thread):
    """Plays the service behind the command topic: answers every order on READY.

    Reads ORDERS with assigned partitions (no group join) and answers each command once, so a
    command sent twice is answered twice: the bridge and the engine must cope.
    """

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True, name="order-service")
        self.bootstrap = bootstrap
        self.answered = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "faults-order-service",
                "enable.auto.commit": False,
            }
        )
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        consumer.assign([TopicPartition(fw.ORDERS, p, OFFSET_BEGINNING) for p in (0, 1)])
        try:
            while not self._stop_event.is_set():
                message = consumer.poll(0.2)
                if message is None or message.error() is not None:
                    producer.poll(0)
                    continue
                try:
                    order = json.loads(message.value())
                except (TypeError, ValueError):
                    continue
                answer = {"order_id": order["order_id"], "n": f"answer-{order['order_id']}"}
                producer.produce(fw.READY, value=json.dumps(answer).encode(), key=str(order["order_id"]))
                producer.poll(0)
                self.answered += 1
        finally:
            producer.flush(10)
            consumer.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)
