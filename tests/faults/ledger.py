"""Reading a campaign's outcome: workflows that never finished, and effects run more than once.

A task run is *explained* when the process that ran it was killed: the engine promises at least
once, so such a run may be repeated (with a new idempotency key). Any other repeat is a defect.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fleet import Stack


@dataclass
class Killed:
    """What the campaign killed: single pool processes, and whole workers by generation."""

    pids: set[int] = field(default_factory=set)
    generations: set[str] = field(default_factory=set)

    def covers(self, pid: int, generation: str) -> bool:
        return pid in self.pids or generation in self.generations


def driver_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outcome(s: Stack, created: list[dict[str, Any]]) -> dict[str, Any]:
    """Workflows by status, those the client was told failed, and what was lost or is stuck."""
    rows = s.query("SELECT id::text, status FROM dagger_django_workflow")
    status = dict(rows)
    refused = [r for r in created if not r["ok"]]
    committed_anyway = [r for r in refused if r["id"] in status]
    unfinished = {wid: st for wid, st in status.items() if st != "COMPLETED"}
    # Lost: a create the client was told succeeded, with no workflow row.
    lost = [r for r in created if r["ok"] and r["id"] not in status]
    return {
        "workflows": len(created),
        "stuck_where": stuck_where(s),
        "by_status": dict(Counter(status.values())),
        "create_errors": len(refused),
        "create_errors_committed_anyway": len(committed_anyway),
        "lost": len(lost),
        "stuck": len(unfinished),
        "lost_or_stuck": len(lost) + len(unfinished),
    }


def repeats(s: Stack, killed: Killed) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs per node and per idempotency key; repeats a kill does not explain (and a few of them)."""
    runs = s.query(
        "SELECT node_id, idem_key, coalesce(message, ''), pid, generation, started_at, finished_at, task"
        " FROM faults_run ORDER BY started_at"
    )
    by_effect: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    by_key: Counter[tuple[str, str]] = Counter()
    for node, key, message, pid, generation, started, finished, task in runs:
        by_effect.setdefault((node, message), []).append((key, pid, generation, started, finished, task))
        by_key[(key, message)] += 1
    unexplained = 0
    examples: list[dict[str, Any]] = []
    for (node, message), effects in by_effect.items():
        for _key, pid, generation, _started, _finished, _task in effects[:-1]:
            if not killed.covers(pid, generation):
                unexplained += 1
                if len(examples) < 5:
                    examples.append({"node": node, "message": message, "runs": [list(e) for e in effects]})
    return {
        "runs": len(runs),
        "effects": len(by_effect),
        "repeated_runs": len(runs) - len(by_effect),
        "same_key_run_twice": sum(1 for n in by_key.values() if n > 1),
        "effects_doubled_beyond_key": unexplained,
    }, examples


#: Every node of every workflow as a row ``(workflow_id, id, name, node_type, status)``, for the SQL
#: of the campaigns: nodes are stored in their workflow's row (``nodes``) and its ``NodePage``
#: rows, each a list in the order of ``dagger_django.models.NODE_FIELDS`` (id 0, name 2,
#: node_type 3, status 6).
NODE_ROWS = (
    "(SELECT w.id AS workflow_id, (e->>0)::uuid AS id, e->>2 AS name, e->>3 AS node_type, e->>6 AS status"
    " FROM dagger_django_workflow w CROSS JOIN LATERAL jsonb_array_elements(w.nodes) e"
    " UNION ALL SELECT p.workflow_id, (e->>0)::uuid, e->>2, e->>3, e->>6"
    " FROM dagger_django_nodepage p CROSS JOIN LATERAL jsonb_array_elements(p.nodes) e)"
)


def stuck_where(s: Stack) -> dict[str, int]:
    """Where unfinished workflows wait: ``template / task: status`` of their unfinished tasks."""
    rows = s.query(
        "SELECT w.template_name, regexp_replace(n.name, '^.*[.]', ''), n.status, count(*)"
        f" FROM {NODE_ROWS} n JOIN dagger_django_workflow w ON w.id = n.workflow_id"
        " WHERE w.status NOT IN ('COMPLETED', 'FAILURE', 'STOPPED', 'SKIPPED') AND n.node_type = 'LEAF'"
        " AND n.status IN ('SUBMITTED', 'EXECUTING') GROUP BY 1, 2, 3 ORDER BY 4 DESC"
    )
    return {f"{template} / {task}: {status}": int(count) for template, task, status, count in rows}
