"""Run the benchmark suite: ``python -m benchmarks`` (``make bench``).

Starts what it needs (PostgreSQL and Redis if down, a real Celery worker with 2 prefork
processes on its own queue), runs each workload at each N, prints a table and writes JSON to
benchmarks/results/latest.json. Options: ``--n 200 1000``, ``--workloads linear,cost``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .harness import BENCH_SECRET_KEY, prepare_database

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/dagger_bench"
DEFAULT_BROKER = "redis://127.0.0.1:6379/11"
WORKLOADS = ("linear", "cost", "listener", "timers")
#: Long workloads run only when named: ``memory`` (worker RSS over a long run, benchmarks/memory.py).
EXTRA_WORKLOADS = ("memory",)
#: Workloads with a command of their own (their own database, broker and processes): run as
#: subprocesses, their JSON folded into this report.
SUBCOMMANDS = {"listener": "benchmarks.bridge", "timers": "benchmarks.timers"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[200, 1000, 10000])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (prefork)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]

    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DB)
    # The demo settings refuse to start without a secret key once DATABASE_URL is set.
    env.setdefault("DJANGO_SECRET_KEY", BENCH_SECRET_KEY)
    env.setdefault("CELERY_BROKER_URL", DEFAULT_BROKER)
    env.setdefault("BENCH_REDIS_URL", env["CELERY_BROKER_URL"])
    env["CELERY_QUEUE"] = f"bench-{uuid.uuid4().hex[:8]}"
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["LOG_LEVEL"] = "WARNING"
    os.environ.update(env)

    prepare_database(env)

    import django

    django.setup()
    from django.conf import settings

    from .harness import Worker, machine

    report: dict[str, Any] = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "settings": {
            "database": settings.DATABASES["default"]["ENGINE"],
            "broker": settings.CELERY_BROKER_URL.split("://")[0],
            "worker": f"prefork x{args.concurrency}",
            "DAGGER": getattr(settings, "DAGGER", {}),
        },
        "results": {},
    }
    worker = Worker(env=env, concurrency=args.concurrency)
    worker.start()
    try:
        for name in workloads:
            if name not in SUBCOMMANDS:
                report["results"][name] = _run(name, args.n, worker)
        report["rss_mb"] = worker.rss_mb()
    finally:
        worker.stop()
    for name in workloads:
        if name in SUBCOMMANDS:
            report["results"][name] = _run_subcommand(name, args.n)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    print(f"\nJSON written to {args.json}")
    return 0


def _run(name: str, sizes: list[int], worker: Any) -> Any:
    if name == "linear":
        from . import linear

        rows = []
        for n in sizes:
            pid = worker.proc.pid if worker.proc is not None else None
            dagger = linear.run_dagger(n, worker_pid=pid)
            bare = linear.run_bare_chain(n, worker_pid=pid)
            process = linear.run_dagger(n, checkpoint="process", worker_pid=pid)
            chain_rate = bare["chains_per_s"] or float("nan")
            ratio = dagger["workflows_per_s"] / chain_rate
            ratio_process = process["workflows_per_s"] / chain_rate
            rows.append(
                {
                    "n": n,
                    "dagger": dagger,
                    "bare_celery_chain": bare,
                    "dagger_checkpoint_process": process,
                    "ratio": round(ratio, 2),
                    "ratio_checkpoint_process": round(ratio_process, 2),
                }
            )
            print(
                f"  linear n={n}: dagger {dagger['workflows_per_s']}/s, bare chain {bare['chains_per_s']}/s,"
                f" ratio {ratio:.2f}; checkpoint=process {process['workflows_per_s']}/s, ratio {ratio_process:.2f}",
                flush=True,
            )
            print(
                f"    commits per workflow (all of the database's, polling included): dagger"
                f" {dagger['commits_per_workflow']}, checkpoint=process {process['commits_per_workflow']}",
                flush=True,
            )
            for label, cpu in (
                ("dagger", dagger["cpu_ms_per_workflow"]),
                ("bare chain", bare["cpu_ms_per_chain"]),
                ("checkpoint=process", process["cpu_ms_per_workflow"]),
            ):
                print(
                    f"    CPU ms per workflow, {label}: " + ", ".join(f"{k} {v}" for k, v in cpu.items()),
                    flush=True,
                )
        return rows
    if name == "cost":
        from . import cost

        return cost.run()
    if name == "memory":
        from . import memory

        return memory.run(max(sizes), worker)
    raise SystemExit(f"unknown workload {name!r}; known: {', '.join((*WORKLOADS, *EXTRA_WORKLOADS))}")


def _run_subcommand(name: str, sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_QUEUE")
    }
    for n in sizes:
        out = ROOT / "benchmarks" / "results" / f"{name}-{n}.json"
        print(f"  {name} n={n}: python -m {SUBCOMMANDS[name]} --n {n}", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", SUBCOMMANDS[name], "--n", str(n), "--json", str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        if done.returncode != 0 or not out.exists():
            rows.append({"n": n, "error": f"exit {done.returncode}"})
            continue
        rows.append({"n": n, **json.loads(out.read_text())})
    return rows


def _print(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nmachine: {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}, Django {m['django']},"
          f" Celery {m['celery']}; {m['postgresql']}; {m['redis']}")  # fmt: skip
    print(f"settings: {report['settings']}")
    linear = report["results"].get("linear")
    if linear:
        print(
            "\nW1 linear (3 executor steps)        n   wf/s  trans/s  p50 s   p99 s | bare chain/s  p50 s   p99 s | ratio"
            " | checkpoint=process wf/s  ratio"
        )
        for row in linear:
            d, b = row["dagger"], row["bare_celery_chain"]
            c = row.get("dagger_checkpoint_process") or {"workflows_per_s": "-"}
            print(
                f"{'':34}{row['n']:>5} {d['workflows_per_s']:>6} {d['transitions_per_s']:>8}"
                f" {d['latency_s']['p50']:>6} {d['latency_s']['p99']:>7} | {b['chains_per_s']:>12}"
                f" {b['latency_s']['p50']:>6} {b['latency_s']['p99']:>7} | {row['ratio']:>5}"
                f" | {c['workflows_per_s']:>23} {row.get('ratio_checkpoint_process', '-'):>6}"
            )
    memory = report["results"].get("memory")
    if memory:
        print(
            f"\nWorker RSS over {memory['total']} workflows (MB after each round of {memory['round_size']})"
        )
        for row in memory["rounds"]:
            print(f"  {row['workflows']:>8}  {row['workflows_per_s']:>7}/s  {row['rss_mb']}")
        print(f"  drift, last round against the first: {memory['drift_pct']} %")
    cost = report["results"].get("cost")
    if cost:
        print("\nW5 cost per transition              queries  rows written")
        for step, row in cost.items():
            print(f"  {step:<34}{row['queries']:>7}  {row['rows_written']:>12}")
    listener = report["results"].get("listener")
    if listener:
        print(
            "\nW2 listener (Kafka, one bridge)     n  routed msg/s | msg -> next task: offered/s  done/s  p50 s   p99 s"
        )
        for row in listener:
            if "error" in row:
                print(f"{'':34}{row['n']:>5}  {row['error']}")
                continue
            t, lat = row["throughput"], row["latency"]
            print(
                f"{'':34}{row['n']:>5} {t['messages_per_s']:>12} | {lat['rate_offered_per_s']:>26}"
                f" {lat['completed_per_s']:>7} {lat['latency_s']['p50']:>6} {lat['latency_s']['p99']:>7}"
            )
    timers = report["results"].get("timers")
    if timers:
        print(
            "\nW3 timers due in the same second      n | fired late p50 s  p99 s | completed late p50 s  p99 s"
        )
        for row in timers:
            if "error" in row:
                print(f"{'':35}{row['n']:>5}  {row['error']}")
                continue
            f, d = row["fire_lateness_s"], row["done_lateness_s"]
            print(
                f"{'':35}{row['n']:>5} | {f['p50']:>16.3f} {f['p99']:>6.3f} | {d['p50']:>20.3f} {d['p99']:>6.3f}"
            )
    if "rss_mb" in report:
        print("\npeak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in report["rss_mb"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
