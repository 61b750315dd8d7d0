"""W1 linear: a 3-step workflow versus a bare Celery chain of 3 equivalent tasks, same worker."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import chain

from .cpu import CpuMeter, per_item_ms
from .harness import reset_tables, summary
from .workflows import chain_step, linear_template

CLIENT_THREADS = 4


def _create(template: Any, count: int) -> None:
    from django.db import connection

    try:
        for _ in range(count):
            template.create_instance(submit_task=True)
    finally:
        connection.close()


def run_dagger(
    n: int, *, timeout: float = 600, checkpoint: str = "task", worker_pid: int | None = None
) -> dict[str, Any]:
    from django.db import connection
    from django.db.models import F, Max, Min

    from dagger_django.engine.selectors import history_transitions_count
    from dagger_django.models import Status, Workflow

    template = linear_template(name=f"BenchLinear-{checkpoint}", checkpoint=checkpoint)
    template.create_instance()  # store the template version outside the measurement
    reset_tables()
    connection.close()

    meter = CpuMeter(worker_pid)
    commits_before = _commits()
    meter.start()
    started = time.time()
    per_thread = [n // CLIENT_THREADS + (1 if i < n % CLIENT_THREADS else 0) for i in range(CLIENT_THREADS)]
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(lambda c: _create(template, c), per_thread))
    submitted = time.time()
    deadline = time.monotonic() + timeout
    while Workflow.objects.filter(status=Status.COMPLETED).count() < n:
        if time.monotonic() > deadline:
            raise RuntimeError("dagger workflows did not complete in time")
        if Workflow.objects.filter(status=Status.FAILURE).exists():
            raise RuntimeError("a benchmark workflow failed")
        time.sleep(0.1)
    cpu = meter.stop()
    commits = _commits() - commits_before
    agg = Workflow.objects.aggregate(first=Min("time_created"), last=Max("time_completed"))
    elapsed = (agg["last"] - agg["first"]).total_seconds()
    latencies = [
        d.total_seconds()
        for d in Workflow.objects.annotate(d=F("time_completed") - F("time_created")).values_list(
            "d", flat=True
        )
    ]
    transitions = history_transitions_count()
    return {
        "n": n,
        "elapsed_s": round(elapsed, 3),
        "submit_s": round(submitted - started, 3),
        "workflows_per_s": round(n / elapsed, 1),
        "transitions_per_s": round(transitions / elapsed, 1),
        "latency_s": {k: round(v, 4) for k, v in summary(latencies).items()},
        "cpu_ms_per_workflow": per_item_ms(cpu, n),
        # Every commit in the benchmark's database over the run (clients, workers, the polling
        # reads' autocommits) per workflow: an upper bound of the engine's own.
        "commits_per_workflow": round(commits / n, 2),
    }


def _commits() -> int:
    """Transactions committed in this database so far (PostgreSQL's statistics; 0 elsewhere)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def run_bare_chain(n: int, *, timeout: float = 600, worker_pid: int | None = None) -> dict[str, Any]:
    from .redis_marks import count, marks

    run = uuid.uuid4().hex
    meter = CpuMeter(worker_pid)
    meter.start()
    started = time.time()
    for _ in range(n):
        payload = {"run": run, "t0": time.time()}
        chain(chain_step.s(payload, "s0"), chain_step.s("s1"), chain_step.s("s2", True)).apply_async()
    deadline = time.monotonic() + timeout
    while count(run) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("bare chains did not complete in time")
        time.sleep(0.05)
    cpu = meter.stop()
    done = marks(run)
    elapsed = max(f for _, f in done) - started
    latencies = [f - s for s, f in done]
    return {
        "n": n,
        "elapsed_s": round(elapsed, 3),
        "chains_per_s": round(n / elapsed, 1),
        "latency_s": {k: round(v, 4) for k, v in summary(latencies).items()},
        "cpu_ms_per_chain": per_item_ms(cpu, n),
    }
