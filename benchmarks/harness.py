"""Processes and measurements shared by the workloads: services, a worker, RSS, percentiles."""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def superuser_client(username: str) -> Any:
    """A Django test client logged in as superuser ``username`` (created on first use), for timing
    the admin pages and the API in process."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is None:
        user = user_model.objects.create_superuser(username, f"{username}@example.com", uuid.uuid4().hex)
    client = Client()
    client.force_login(user)
    return client


def _status_mb(pid: int, field: str) -> float:
    """A memory line of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``) in MB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, in MB; 0 when it is gone."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """Resident memory now (VmRSS) of a process, in MB; 0 when it is gone."""
    return _status_mb(pid, "VmRSS")


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [int(x) for x in out.split()]


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    import celery
    import django
    import kombu

    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "django": django.get_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "postgresql": pg,
        "redis": " ".join(redis_v[:3]),
    }


@dataclass
class Worker:
    """A real Celery worker subprocess on its own queue."""

    env: dict[str, str]
    concurrency: int = 2
    pool: str = "prefork"
    include: tuple[str, ...] = ("benchmarks.workflows",)
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path(f"/tmp/dagger-bench-worker-{uuid.uuid4().hex[:6]}.log"))

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "-l", "warning",
            f"--pool={self.pool}", f"--concurrency={self.concurrency}", "-Q", self.env["CELERY_QUEUE"],
            "-n", f"{self.env['CELERY_QUEUE']}@%h", "--include", ",".join(self.include),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        from config.celery import app

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-2000:]}")
            if app.control.ping(destination=[f"{self.env['CELERY_QUEUE']}@{platform.node()}"], timeout=0.5):
                return
        raise RuntimeError("worker did not become ready in 60 s")

    def rss_mb(self) -> dict[str, float]:
        assert self.proc is not None
        out = {"worker_main": peak_rss_mb(self.proc.pid)}
        for i, child in enumerate(children(self.proc.pid)):
            out[f"worker_child_{i}"] = peak_rss_mb(child)
        return out

    def rss_now_mb(self) -> dict[str, float]:
        """The worker's resident memory now: its main process and each pool process."""
        assert self.proc is not None
        out = {"worker_main": round(rss_mb(self.proc.pid), 1)}
        for i, child in enumerate(sorted(children(self.proc.pid))):
            out[f"worker_child_{i}"] = round(rss_mb(child), 1)
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


#: The demo settings need a secret key once DATABASE_URL is set; benchmarks run with this one
#: unless the environment gives its own.
BENCH_SECRET_KEY = "bench-only-insecure-secret-key"


def reset_tables() -> None:
    """Empty the workflow tables (everything that references workflows goes with them)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE dagger_django_workflow CASCADE")


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database named in ``url`` if it does not exist yet."""
    from urllib.parse import urlsplit

    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def prepare_database(env: dict[str, str]) -> None:
    """Services up (PostgreSQL, Redis), the benchmark's database created and migrated."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure_services.sh")], check=True, stdout=subprocess.DEVNULL
    )
    ensure_database(env["DATABASE_URL"])
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
