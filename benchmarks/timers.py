"""Timer lateness: N trigger workflows due in the same second, real workers and a real beat.

    python -m benchmarks.timers                 # N = 10,000
    python -m benchmarks.timers --n 1000 --concurrency 2 --workers 1

What it does: makes sure PostgreSQL and Redis run, migrates its own database (default
``dagger_time_bench``; ``DATABASE_URL``/``CELERY_BROKER_URL`` override), starts the Celery
worker(s) and ``celery beat`` (database scheduler, the sweep every ``--trigger-interval``
seconds) on a queue of its own, empties the workflow tables, then creates N workflows whose only
task is a ``TriggerTask`` due at the same whole second, far enough ahead for the creation to
finish (``--lead``). It waits until every workflow is COMPLETED and reports, from the database:

- *fire lateness*: the trigger's ``trigger_due`` history event (written by the transaction that
  fires its timer) minus its due time;
- *done lateness*: the trigger's COMPLETED event (its ``execute`` ran on a worker and the
  result was applied) minus its due time.

Times come from one machine's clock; the history event's time is taken when the firing
transaction starts. Results go to stdout and to ``benchmarks/results/timers.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from dagger_django import TriggerTask

from .harness import BENCH_SECRET_KEY, prepare_database

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/dagger_time_bench"
DEFAULT_BROKER = "redis://127.0.0.1:6379/13"


class BenchTrigger(TriggerTask):
    """The timed task: does nothing, so the numbers measure the engine, not the task."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


def trigger_template(name: str = "BenchTimers") -> Any:
    from benchmarks.timers import BenchTrigger  # by this name, also when run as __main__
    from dagger_django import DAGBuilderHelper, Dagger, TriggerTaskTemplateBuilder

    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    trigger = TriggerTaskTemplateBuilder(Dagger.app).set_type(BenchTrigger).set_name("due")
    trigger.set_time_to_execute_lookup_key("run_at")
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks([trigger])
    )
    return helper.generic_template(template_name=name, root_process=process.build())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timers", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="workflows due in the same second")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (celery worker)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    parser.add_argument(
        "--timer-worker",
        type=int,
        default=0,
        help="pool processes of a worker for DAGGER['TIMER_QUEUE'] alone (0: timers share the queue)",
    )
    parser.add_argument("--trigger-interval", type=int, default=1, help="seconds between sweeps")
    parser.add_argument("--max-per-sweep", type=int, default=2000, help="MAX_TASKS_PER_TRIGGER")
    parser.add_argument("--lead", type=float, default=None, help="seconds from start to the due time")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "timers.json")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DB)
    # The demo settings refuse to start without a secret key once DATABASE_URL is set.
    env.setdefault("DJANGO_SECRET_KEY", BENCH_SECRET_KEY)
    env.setdefault("CELERY_BROKER_URL", DEFAULT_BROKER)
    env["CELERY_QUEUE"] = f"bench-timers-{uuid.uuid4().hex[:8]}"
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["LOG_LEVEL"] = "WARNING"
    env["DAGGER_TRIGGER_INTERVAL"] = str(args.trigger_interval)
    env["DAGGER_MAX_TASKS_PER_TRIGGER"] = str(args.max_per_sweep)
    env["DAGGER_RECOVERY_INTERVAL"] = "0"  # nothing to recover here; keep the beat to one entry
    if args.timer_worker:
        env["DAGGER_TIMER_QUEUE"] = env["CELERY_QUEUE"] + "-timers"
    os.environ.update(env)

    prepare_database(env)

    # SIGTERM (timeout, CI) unwinds like Ctrl-C, so the worker(s) and beat are stopped.
    signal.signal(signal.SIGTERM, _interrupt)

    import django

    django.setup()
    from .harness import Worker, machine, reset_tables, summary

    reset_tables()
    workers = [
        (Worker(env={**env}, concurrency=args.concurrency, include=()), env["CELERY_QUEUE"])
        for _ in range(args.workers)
    ]
    if args.timer_worker:
        workers.append(
            (Worker(env={**env}, concurrency=args.timer_worker, include=()), env["DAGGER_TIMER_QUEUE"])
        )
    beat = None
    try:
        for i, (worker, queue) in enumerate(workers):
            _start_worker(worker, i, queue)
        beat = _start_beat(env)
        result = _run(args)
    finally:
        if beat is not None:
            _stop(beat)
        for worker, _ in workers:
            worker.stop()
        _delete_queues({queue for _, queue in workers})
    report = {
        "command": "python -m benchmarks.timers " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "setup": {
            "n": args.n,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "trigger_interval_s": args.trigger_interval,
            "max_tasks_per_trigger": args.max_per_sweep,
            "timer_worker_processes": args.timer_worker,
        },
        **result,
        "fire_lateness_s": summary(result.pop("_fire")),
        "done_lateness_s": summary(result.pop("_done")),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    print(f"JSON written to {args.json}")
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from django.db import connection

    tmpl = trigger_template()
    lead = args.lead if args.lead is not None else 10 + args.n / 150
    due = math.ceil(time.time() + lead)
    print(
        f"creating {args.n} trigger workflows due at {time.strftime('%H:%M:%S', time.localtime(due))}",
        flush=True,
    )
    started = time.time()
    for _ in range(args.n):
        tmpl.create_instance(submit_task=True, run_at=due)
    created = time.time()
    rate = args.n / (created - started)
    print(
        f"created in {created - started:.1f} s ({rate:.0f}/s); {due - created:.1f} s before the due time",
        flush=True,
    )
    if created >= due:
        raise SystemExit("creation did not finish before the due time: raise --lead")

    deadline = due + args.timeout
    done = 0
    while time.time() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM dagger_django_workflow WHERE status <> 'EXECUTING'")
            done = cursor.fetchone()[0]
        if done >= args.n:
            break
        time.sleep(0.5)
    finished = time.time()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM dagger_django_workflow WHERE status = 'COMPLETED'")
        done = cursor.fetchone()[0]
    print(f"{done}/{args.n} completed {finished - due:.1f} s after the due time", flush=True)

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT extract(epoch FROM h.created_at - t.due_at), e.event->>5
            FROM dagger_django_timer t
            JOIN dagger_django_historyrecord h ON h.workflow_id = t.workflow_id
            -- each event: [node id, node name, from, to, attempt, reason, detail?]
            CROSS JOIN LATERAL jsonb_array_elements(h.events) AS e(event)
            WHERE t.purpose = 'trigger' AND e.event->>0 = t.node_id::text
              AND e.event->>5 IN ('trigger_due', 'executed')
            """
        )
        rows = cursor.fetchall()
    fire = [float(v) for v, reason in rows if reason == "trigger_due"]
    executed = [float(v) for v, reason in rows if reason == "executed"]
    return {
        "created_per_s": round(rate, 1),
        "completed": done,
        "all_completed_after_s": round(finished - due, 2),
        "_fire": fire,
        "_done": executed,
    }


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _start_worker(worker: Any, index: int, queue: str) -> None:
    # Distinct node names so that several workers on one host can be pinged one by one.
    import platform

    from config.celery import app

    argv = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-l", "warning", f"--pool={worker.pool}",
        f"--concurrency={worker.concurrency}", "-Q", queue, "-n", f"{queue}-{index}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker.proc = subprocess.Popen(
        argv, cwd=ROOT, env=worker.env, stdout=worker.log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited: {worker.log.read_text()[-2000:]}")
        if app.control.ping(destination=[f"{queue}-{index}@{platform.node()}"], timeout=0.5):
            return
    raise RuntimeError("worker did not become ready in 60 s")


def _start_beat(env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = Path(f"/tmp/dagger-bench-beat-{uuid.uuid4().hex[:6]}.log")
    schedule = Path(f"/tmp/dagger-bench-beat-{uuid.uuid4().hex[:6]}.schedule")
    argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "info", "--max-interval", "1"]
    argv += ["-s", str(schedule)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"beat exited: {log.read_text()[-2000:]}")
        if "Sending due task" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    raise RuntimeError(f"beat sent nothing in 30 s: {log.read_text()[-2000:]}")


def _delete_queues(queues: set[str]) -> None:
    from kombu import Exchange, Queue

    from config.celery import app

    with app.connection_for_write() as conn:
        for name in queues:
            try:
                bound = Queue(name, Exchange(name, type="direct"), routing_key=name)(conn.default_channel)
                bound.declare()
                bound.delete()
            except Exception:  # noqa: BLE001 - best effort: an empty leftover queue harms nobody
                pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _print(report: dict[str, Any]) -> None:
    m, s = report["machine"], report["setup"]
    print(
        f"\nmachine: {m['cores']} cores, {m['memory_gb']} GB; {m['postgresql']}; {m['redis']}\n"
        f"setup: N={s['n']}, {s['workers']} worker(s) x {s['concurrency']} processes, sweep every "
        f"{s['trigger_interval_s']} s, at most {s['max_tasks_per_trigger']} per sweep, "
        f"timer worker: {s['timer_worker_processes'] or 'none'}"
    )
    print(f"created {report['created_per_s']}/s; all completed {report['all_completed_after_s']} s after due")
    for key, label in (("fire_lateness_s", "fired"), ("done_lateness_s", "done ")):
        v = report[key]
        print(f"{label} lateness: p50 {v['p50']:.3f} s  p99 {v['p99']:.3f} s  max {v['max']:.3f} s")


if __name__ == "__main__":
    raise SystemExit(main())
