"""Campaign: SIGKILL a worker mid-task, again and again, under a mixed load.

Two workers (2 prefork processes each), a beat, a bridge and the 'order service' run on private
services (tests/faults/fleet.py). The driver creates workflows of four kinds (executors in a row,
a command answered through Kafka to a listener, a timer, a parallel group). Spread over the run,
the campaign picks a task that is running (a slow step, per the ledger) and SIGKILLs either the
pool process running it (Celery requeues its message) or the whole worker, main process
included (the message stays unacknowledged; the recovery sweep hands the node out after
``LEASE_SECONDS``), then starts a replacement worker. Figures: workflows lost or stuck, effects
run again beyond what the kills explain, the same idempotency key run twice, and the time from a
kill to the stranded task running again.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

import pytest

from .fleet import OrderService, Stack, stack
from .ledger import NODE_ROWS, Killed, driver_records, outcome, repeats
from .record import broken, write
from .scale import scale

pytestmark = pytest.mark.campaign

#: Full size: 100 kills over 10,000 workflows (about 12 workflows/s with the kills on this 2-core
#: machine when it is quiet: some 14 minutes; docs/reliability.md).
WORKFLOWS = scale(100, 10_000)
KILLS = scale(2, 100)
#: Seconds the load and the kills may take at most: on a machine shared with other work the
#: full campaign stops creating and killing then, drains, and reports the sizes it reached.
BUDGET = scale(300, 1_200)
#: One kill in this many takes the whole worker (a replacement then starts, which takes a while);
#: the others kill the pool process running the task.
WHOLE_WORKER_EVERY = 2 if KILLS < 10 else 4


def _running_slow_step(s: Stack, live: set[str], killed: Killed) -> tuple[int, str, str] | None:
    """(pid, generation, node) of a slow step running for at least 50 ms in a live worker."""
    rows = s.query(
        "SELECT pid, generation, node_id FROM faults_run WHERE finished_at IS NULL AND message IS NULL"
        " AND started_at > %s AND started_at < %s AND task LIKE %s ORDER BY started_at DESC",
        (time.time() - 5, time.time() - 0.05, "%slow%"),
    )
    for pid, generation, node in rows:
        if generation in live and pid not in killed.pids:
            return int(pid), str(generation), str(node)
    return None


def _kill_one(s: Stack, mode: str, killed: Killed) -> dict[str, object] | None:
    """Kill a process running a slow step; a list of what it stranded, with the kill's time."""
    live = {str(i + 1) for i, w in enumerate(s.workers) if w.proc.poll() is None}
    deadline = time.monotonic() + 30
    target = None
    while target is None and time.monotonic() < deadline:
        target = _running_slow_step(s, live, killed)
        if target is None:
            time.sleep(0.02)
    if target is None:
        return None
    pid, generation, _node = target
    worker = s.workers[int(generation) - 1]
    at = time.time()
    if mode == "process":
        os.kill(pid, signal.SIGKILL)
        killed.pids.add(pid)
    else:
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
        killed.generations.add(generation)
    # What the dead process left unfinished (the latest run of its node, not one an earlier kill
    # left behind): each must run again somewhere else.
    latest = (
        "SELECT node_id FROM faults_run r WHERE finished_at IS NULL AND {} AND NOT EXISTS"
        " (SELECT 1 FROM faults_run l WHERE l.node_id = r.node_id AND l.started_at > r.started_at)"
    )
    if mode == "process":
        stranded = s.query(latest.format("pid = %s"), (pid,))
    else:
        stranded = s.query(latest.format("generation = %s"), (generation,))
    if mode == "worker":
        s.start_worker()
    return {"mode": mode, "at": at, "nodes": [row[0] for row in stranded]}


def _recovery_seconds(s: Stack, kills: list[dict[str, object]]) -> tuple[list[float], int]:
    """Per kill, the seconds until the last node it stranded started again; and nodes never rerun.

    Each kill's own figure is kept in it (``recovery_s``) for the record.
    """
    seconds, never = [], 0
    for kill in kills:
        kill["recovery_s"] = None
        worst = 0.0
        for node in kill["nodes"]:  # type: ignore[attr-defined]
            rerun = s.query(
                "SELECT min(started_at) FROM faults_run WHERE node_id = %s AND started_at > %s",
                (node, kill["at"]),
            )[0][0]
            if rerun is None:
                never += 1
            else:
                worst = max(worst, rerun - float(kill["at"]))  # type: ignore[arg-type]
        if kill["nodes"]:
            seconds.append(worst)
            kill["recovery_s"] = round(worst, 2)
            # The engine's history of the first stranded node, in seconds from the kill: why it
            # took as long as it did.
            kill["history"] = [
                [round(at - float(kill["at"]), 2), status, reason]  # type: ignore[arg-type]
                for at, status, reason in s.query(
                    # One history row per transaction, its events in order: [node id, node name,
                    # from, to, attempt, reason, detail?] (dagger_django/models/history.py).
                    "SELECT extract(epoch FROM h.created_at)::float, e.event->>3, e.event->>5"
                    " FROM dagger_django_historyrecord h"
                    " CROSS JOIN LATERAL jsonb_array_elements(h.events) WITH ORDINALITY AS e(event, n)"
                    f" WHERE h.workflow_id = (SELECT workflow_id FROM {NODE_ROWS} n WHERE n.id = %s::uuid)"
                    " AND e.event->>0 = %s::text ORDER BY h.id, e.n",
                    (kill["nodes"][0], kill["nodes"][0]),  # type: ignore[index]
                )
            ]
    return seconds, never


def test_workers_killed_mid_task_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    with stack(tmp_path / "stack") as s:
        s.start_worker()
        s.start_worker()
        s.start_beat()
        bridge = s.start_bridge(["faults_ready"])
        bridge.wait_log("bridge: assigned")
        service = OrderService(s.kafka.bootstrap)
        service.start()
        out = tmp_path / "created.jsonl"
        driver = s.start_driver("--count", str(WORKFLOWS), "--out", str(out), "--max-inflight", "60")
        killed, kills = Killed(), []
        budget_end = time.monotonic() + BUDGET
        try:
            for i in range(KILLS):
                # Spread the kills over the run: kill i once i/KILLS of the workflows exist.
                while len(driver_records(out)) < WORKFLOWS * i // KILLS and driver.alive():
                    time.sleep(0.1)
                if time.monotonic() > budget_end:
                    break
                kill = _kill_one(s, "worker" if i % WHOLE_WORKER_EVERY == 1 else "process", killed)
                if kill is not None:
                    kills.append(kill)
            while driver.alive() and time.monotonic() < budget_end:
                time.sleep(0.5)
            if driver.alive():
                driver.stop()  # the budget is spent: what was created is drained and counted
            else:
                assert driver.proc.returncode == 0, driver.log()[-3000:]
            waited = s.wait_finished(len(driver_records(out)), timeout=scale(120, 300))
            assert bridge.alive(), bridge.log()[-3000:]
        finally:
            service.stop()
        created = driver_records(out)
        result = outcome(s, created)
        effects, examples = repeats(s, killed)
        recovery, never_rerun = _recovery_seconds(s, kills)
    by_mode = {
        mode: [float(k["recovery_s"]) for k in kills if k["mode"] == mode and k["recovery_s"] is not None]  # type: ignore[arg-type]
        for mode in ("process", "worker")
    }
    figures = {
        **result,
        "workflows_planned": WORKFLOWS,
        "kills_planned": KILLS,
        "kills": len(kills),
        "kills_of_a_pool_process": sum(1 for k in kills if k["mode"] == "process"),
        "kills_of_a_whole_worker": sum(1 for k in kills if k["mode"] == "worker"),
        "stranded_tasks": sum(len(k["nodes"]) for k in kills),  # type: ignore[arg-type]
        "stranded_never_rerun": never_rerun,
        "recovery_s_median": round(statistics.median(recovery), 2) if recovery else None,
        "recovery_s_max": round(max(recovery), 2) if recovery else None,
        "recovery_s_max_pool_process": max(by_mode["process"], default=None),
        "recovery_s_max_whole_worker": max(by_mode["worker"], default=None),
        **effects,
        "drain_s_after_last_create": round(waited, 1),
    }
    write(
        "worker_kill",
        "SIGKILL a worker mid-task",
        figures,
        started=started,
        examples=[*examples, *kills],
        defects=broken(
            figures,
            "lost_or_stuck",
            "stranded_never_rerun",
            "effects_doubled_beyond_key",
            "same_key_run_twice",
        ),
    )
    assert len(kills) >= min(KILLS, 2), f"only {len(kills)} of {KILLS} kills found a running task"
    assert result["lost_or_stuck"] == 0, figures
    assert never_rerun == 0, figures
    assert effects["effects_doubled_beyond_key"] == 0, figures
    assert effects["same_key_run_twice"] == 0, figures
