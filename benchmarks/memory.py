"""Worker memory over a long run: W1 workflows in rounds, the worker's resident memory after each.

``python -m benchmarks --workloads memory --n 100000`` runs 100,000 3-step workflows through one
worker (2 prefork processes) in rounds of 10,000 (fewer when N is smaller), the workflow tables
emptied between rounds so the database stays the same size, and reads the resident memory (VmRSS)
of the worker's main process and of each pool process after every round. The first round warms up
(imports, caches, the connection); the drift is the last round against the first, in percent. The
issue's target is a flat line: every process within 10 % of its first round.
"""

from __future__ import annotations

from typing import Any

from . import linear

ROUND = 10_000


def run(total: int, worker: Any, *, round_size: int = ROUND) -> dict[str, Any]:
    size = min(round_size, total)
    rounds: list[dict[str, Any]] = []
    done = 0
    pid = worker.proc.pid if worker.proc is not None else None
    while done < total:
        n = min(size, total - done)
        result = linear.run_dagger(n, timeout=max(600, n / 5), worker_pid=pid)
        done += n
        rounds.append(
            {"workflows": done, "workflows_per_s": result["workflows_per_s"], "rss_mb": worker.rss_now_mb()}
        )
        print(
            f"  memory: {done} workflows, {result['workflows_per_s']}/s, RSS MB {rounds[-1]['rss_mb']}",
            flush=True,
        )
    first, last = rounds[0]["rss_mb"], rounds[-1]["rss_mb"]
    drift = {k: round(100 * (last.get(k, 0.0) - v) / v, 1) for k, v in first.items() if v}
    return {"total": total, "round_size": size, "rounds": rounds, "drift_pct": drift}
