"""The engine alone: W1's 3-step workflow run in one process, no broker, CPU split by side.

    python -m benchmarks.engine                  # 500 workflows, 3 rounds
    python -m benchmarks.engine --n 1000 --rounds 1 --profile /tmp/engine.prof
    python -m benchmarks.engine --batch 20 --checkpoint process   # batches of 20, one commit per chain

Where W1's time goes, without Celery, Redis or client threads in the way: this process creates N
workflows (``create_instance(submit_task=True)``) and runs them to completion through the engine's
own services with the in-memory dispatcher (what a worker does for each Celery message). For each
round it reports workflows/s, this process's CPU per workflow (Django, psycopg, the engine) and the
CPU of the PostgreSQL backend serving its connection (read from ``/proc``, so PostgreSQL must run
on this machine). ``--profile`` writes a ``cProfile`` file of the last round (``python -m pstats``
reads it); profiling slows the round down, so its rate is not comparable. ``--batch K`` runs the
queued nodes K workflows at a time (``services.nodes_run``, what a worker does with a ``run_nodes``
message); ``--checkpoint process`` uses a template with ``checkpoint="process"``. Each round also
reports the commits per workflow (``pg_stat_database.xact_commit`` of the benchmark's database).

Uses its own database (default ``dagger_bench_engine``; ``DATABASE_URL`` overrides), created and
migrated, with the workflow tables emptied before each round.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import time
from pathlib import Path
from typing import Any

from .harness import BENCH_SECRET_KEY, prepare_database

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/dagger_bench_engine"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds() -> float | None:
    """CPU time (user + system) of the PostgreSQL backend of this process's connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # PostgreSQL runs elsewhere
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def commits() -> int:
    """Transactions committed in this database so far (PostgreSQL's own counter)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def run_round(template: Any, n: int, profile: Path | None, batch: int = 1) -> dict[str, Any]:
    from dagger_django.engine import ports
    from dagger_django.testing import InMemoryDispatcher

    from .harness import reset_tables

    reset_tables()
    dispatcher = InMemoryDispatcher(batch=batch > 1, batch_size=batch)
    previous = ports.set_dispatcher(dispatcher)  # the real clock stays

    def work() -> None:
        for _ in range(n):
            template.create_instance(submit_task=True)
        dispatcher.drain(max_rounds=10 * n + 10)

    try:
        commits_before = commits()
        pg_before = backend_cpu_seconds()
        cpu_before, started = time.process_time(), time.perf_counter()
        if profile is not None:
            cProfile.runctx("work()", globals(), {"work": work}, str(profile))
        else:
            work()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
        pg_after = backend_cpu_seconds()
        time.sleep(0.6)  # the statistics collector's counters lag by up to half a second
        committed = commits() - commits_before - 2  # minus the two reads of the counter itself
    finally:
        ports.set_dispatcher(previous)
    from dagger_django.models import Status, Workflow

    done = Workflow.objects.filter(status=Status.COMPLETED).count()
    if done != n:
        raise RuntimeError(f"{done} of {n} workflows completed")
    pg = None if pg_before is None or pg_after is None else (pg_after - pg_before) * 1000 / n
    return {
        "workflows_per_s": round(n / elapsed, 1),
        "python_cpu_ms_per_workflow": round(cpu * 1000 / n, 2),
        "postgres_cpu_ms_per_workflow": None if pg is None else round(pg, 2),
        "commits_per_workflow": round(committed / n, 2),
        "profiled": profile is not None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__)
    parser.add_argument("--n", type=int, default=500, help="workflows per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None, help="cProfile output of the last round")
    parser.add_argument("--batch", type=int, default=1, help="run queued nodes this many workflows at a time")
    parser.add_argument("--checkpoint", choices=("task", "process"), default="task")
    args = parser.parse_args(argv)
    if args.n <= 0 or args.rounds <= 0:
        parser.error("--n and --rounds must be positive")
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DB)
    # The demo settings refuse to start without a secret key once DATABASE_URL is set.
    env.setdefault("DJANGO_SECRET_KEY", BENCH_SECRET_KEY)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.update(env)
    prepare_database(env)

    import django

    django.setup()
    from .workflows import linear_template

    template = linear_template(name=f"BenchLinear-{args.checkpoint}", checkpoint=args.checkpoint)
    template.create_instance()  # store the template version outside the measurement
    for i in range(args.rounds):
        profile = args.profile if i == args.rounds - 1 else None
        result = run_round(template, args.n, profile, batch=args.batch)
        print(
            f"round {i + 1}: {args.n} workflows, {result['workflows_per_s']}/s; CPU per workflow: "
            f"this process {result['python_cpu_ms_per_workflow']} ms, "
            f"PostgreSQL backend {result['postgres_cpu_ms_per_workflow']} ms; "
            f"commits per workflow {result['commits_per_workflow']}"
            + (" (profiled)" if result["profiled"] else ""),
            flush=True,
        )
    if args.profile is not None:
        print(f"profile written to {args.profile} (python -m pstats {args.profile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
