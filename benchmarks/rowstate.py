"""Node state in rows or in the workflow row: the writes of W5's 3-step workflow, replayed in SQL.

    python -m benchmarks.rowstate                 # 500 workflows per layout, 3 rounds, alternating
    python -m benchmarks.rowstate --n 1000 --rounds 5

The measurement that chose the layout of migration 0012 (docs/internals.md, "Node state in the
workflow row"), kept to compare the two outside the engine: the transactions of one 3-step
workflow (create+submit, claim, three applies) as the engine wrote them before 0012 (``rows``: a
workflow row, one row per node, one history row per transaction) and with the node states in the
workflow row (``document``: the nodes as one JSON document in the row, with the narrow
``leased_since`` column recovery reads, plus the same history rows). Each layout gets scratch
tables in a schema of its own, dropped at the end: the workflow and history tables copied from
the engine's (``LIKE ... INCLUDING ALL``), the node table as 0009 left it, with the same indexes
and foreign keys.

Per round and layout it reports rows written, statements, the CPU of the PostgreSQL backend
serving the connection (from ``/proc``, so PostgreSQL must run on this machine), this process's
CPU (psycopg binding and JSON encoding, not the engine's Python), and table + index bytes per
workflow after a ``VACUUM FULL`` (live data only; WAL is not counted: the cluster's WAL position
moves with every database on it). The layouts alternate within a round, so a noisy machine slows
both alike. Uses the benchmark database (``DATABASE_URL``, default ``dagger_bench_engine``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/dagger_bench_engine"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STEPS = 3


def _backend_cpu(cur: Any) -> float:
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _schema(cur: Any, name: str, document: bool) -> None:
    cur.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    cur.execute(f"CREATE SCHEMA {name}")
    cur.execute(f"CREATE TABLE {name}.workflow (LIKE public.dagger_django_workflow INCLUDING ALL)")
    cur.execute(f"CREATE TABLE {name}.history (LIKE public.dagger_django_historyrecord INCLUDING ALL)")
    cur.execute(
        f"ALTER TABLE {name}.history ADD FOREIGN KEY (workflow_id) REFERENCES {name}.workflow (id)"
        " DEFERRABLE INITIALLY DEFERRED"
    )
    if not document:  # the workflow row as it was before migration 0012
        cur.execute(
            f"ALTER TABLE {name}.workflow DROP COLUMN nodes, DROP COLUMN node_pages, DROP COLUMN leased_since,"
            " DROP COLUMN resend_at, DROP COLUMN stop_hooks_since"
        )
        cur.execute(f"CREATE TABLE {name}.node ({NODE_TABLE})")
        for index in NODE_INDEXES:
            cur.execute(index.format(s=name))
        cur.execute(
            f"ALTER TABLE {name}.node ADD FOREIGN KEY (workflow_id) REFERENCES {name}.workflow (id)"
            " DEFERRABLE INITIALLY DEFERRED"
        )


#: The node table as migration 0011 left it (0012 moved the nodes into the workflow row).
NODE_TABLE = (
    "id uuid PRIMARY KEY, name varchar(500) NOT NULL, node_type varchar(24) NOT NULL,"
    " kind varchar(16) NOT NULL, task_class varchar(300) NOT NULL, status varchar(16) NOT NULL,"
    " position integer NOT NULL CHECK (position >= 0), next_ids jsonb NOT NULL, child_ids jsonb NOT NULL,"
    " config jsonb NOT NULL, attempts integer NOT NULL CHECK (attempts >= 0), lease varchar(64) NOT NULL,"
    " error text NOT NULL, time_created timestamptz NOT NULL, time_submitted timestamptz,"
    " time_completed timestamptz, updated_at timestamptz NOT NULL, parent_id uuid, workflow_id uuid NOT NULL,"
    " redispatch_at timestamptz, redispatches smallint NOT NULL CHECK (redispatches >= 0),"
    " stop_hook varchar(8) NOT NULL, stop_hook_at timestamptz"
)
NODE_INDEXES = (
    "CREATE INDEX ON {s}.node (workflow_id)",
    "CREATE INDEX ON {s}.node (status, updated_at) WHERE status IN ('SUBMITTED', 'EXECUTING')",
    "CREATE INDEX ON {s}.node (redispatch_at) WHERE redispatch_at IS NOT NULL",
    "CREATE INDEX ON {s}.node (updated_at) WHERE stop_hook = 'pending'",
)
WF_COLS = (
    "id, template_id, template_name, template_class, failure_policy, status, runtime_parameters,"
    " partition_key_lookup, business_key, root_node_id, update_count, deferred_node_ids, has_timers,"
    " error, time_created, time_submitted, time_completed, updated_at"
)
NODE_COLS = (
    "id, workflow_id, parent_id, name, node_type, kind, task_class, status, position, next_ids,"
    " child_ids, config, attempts, lease, error, time_created, time_submitted, time_completed,"
    " updated_at, redispatch_at, redispatches, stop_hook, stop_hook_at"
)
#: The node fields the engine updates (engine/state.py NODE_UPDATE_FIELDS), in that order.
NODE_SET = (
    "status = %s, attempts = %s, lease = %s, error = %s, config = %s, time_submitted = %s,"
    " time_completed = %s, updated_at = %s, redispatch_at = %s, redispatches = %s, stop_hook = %s,"
    " stop_hook_at = %s"
)


def _nodes(wid: uuid.UUID, now: dt.datetime) -> list[dict[str, Any]]:
    """The four nodes of W5's workflow, as the engine materialises them (a process, 3 steps)."""
    ids = [uuid.uuid4() for _ in range(STEPS + 1)]
    out = [
        {
            "id": ids[0],
            "parent_id": None,
            "name": "BenchLinear-task.main",
            "node_type": "SUB_DAG",
            "kind": "process",
            "task_class": "dagger_django.definitions.tasks:DefaultProcessTemplateDAGInstance",
            "next_ids": [],
            "child_ids": [str(ids[1])],
            "config": {
                "allow_skip_to": False,
                "template_name": "main",
                "max_run_duration": 0,
                "reprocess_on_message": False,
            },
        }
    ]
    for i in range(STEPS):
        out.append(
            {
                "id": ids[i + 1],
                "parent_id": ids[0],
                "name": f"BenchLinear-task.main.s{i}_executor_task",
                "node_type": "LEAF",
                "kind": "executor",
                "task_class": "benchmarks.workflows:Step",
                "next_ids": [str(ids[i + 2])] if i + 1 < STEPS else [],
                "child_ids": [],
                "config": {
                    "allow_skip_to": False,
                    "template_name": f"s{i}_executor_task",
                    "reprocess_on_message": False,
                },
            }
        )
    for position, node in enumerate(out):
        node.update(
            workflow_id=wid,
            position=position,
            status="NOT_STARTED",
            attempts=0,
            lease="",
            error="",
            time_created=now,
            time_submitted=None,
            time_completed=None,
            updated_at=now,
            redispatch_at=None,
            redispatches=0,
            stop_hook="",
            stop_hook_at=None,
        )
    return out


def _event(node: dict[str, Any] | None, frm: str, to: str, reason: str) -> list[Any]:
    if node is None:
        return [None, "", frm, to, 0, reason]
    return [str(node["id"]), node["name"], frm, to, node["attempts"], reason]


#: A node in the document: short keys, times as ISO text, empty values left off.
DOC_KEYS = {
    "id": "i",
    "parent_id": "p",
    "name": "n",
    "node_type": "t",
    "kind": "k",
    "task_class": "c",
    "status": "s",
    "position": "o",
    "next_ids": "x",
    "child_ids": "h",
    "config": "g",
    "attempts": "a",
    "lease": "l",
    "error": "e",
    "time_created": "tc",
    "time_submitted": "ts",
    "time_completed": "td",
    "updated_at": "u",
    "redispatch_at": "r",
    "redispatches": "rn",
    "stop_hook": "sh",
    "stop_hook_at": "sa",
}


def _doc(nodes: list[dict[str, Any]]) -> str:
    out = []
    for node in nodes:
        entry = {}
        for key, short in DOC_KEYS.items():
            value = node[key]
            if key == "workflow_id" or value in (None, "", [], 0) and key not in ("status", "position"):
                continue
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, dt.datetime):
                value = value.isoformat()
            entry[short] = value
        out.append(entry)
    return json.dumps(out, separators=(",", ":"))


def _leased_since(nodes: list[dict[str, Any]]) -> dt.datetime | None:
    due = [
        n["updated_at"]
        for n in nodes
        if n["node_type"] == "LEAF" and n["status"] in ("SUBMITTED", "EXECUTING")
    ]
    return min(due) if due else None


class Layout:
    def __init__(self, conn: Any, schema: str, document: bool) -> None:
        self.conn, self.s, self.document = conn, schema, document
        self.rows = self.statements = 0

    def _x(self, cur: Any, sql: str, params: Any = None, rows: int = 0) -> None:
        cur.execute(sql, params)
        self.statements += 1
        self.rows += rows

    def _xm(self, cur: Any, sql: str, params: list[Any]) -> None:
        cur.executemany(sql, params)
        self.statements += 1
        self.rows += len(params)

    def _history(self, cur: Any, wid: uuid.UUID, now: dt.datetime, events: list[Any]) -> None:
        self._x(
            cur,
            f"INSERT INTO {self.s}.history (workflow_id, created_at, events) VALUES (%s, %s, %s)",
            [wid, now, json.dumps(events)],
            1,
        )

    def _node_params(self, n: dict[str, Any]) -> list[Any]:
        return [
            n["status"],
            n["attempts"],
            n["lease"],
            n["error"],
            json.dumps(n["config"]),
            n["time_submitted"],
            n["time_completed"],
            n["updated_at"],
            n["redispatch_at"],
            n["redispatches"],
            n["stop_hook"],
            n["stop_hook_at"],
            n["id"],
        ]

    def run_workflow(self, template_id: int) -> None:
        now = dt.datetime.now(dt.UTC)
        wid = uuid.uuid4()
        nodes = _nodes(wid, now)
        params: dict[str, Any] = {}
        wf = [
            wid,
            template_id,
            "BenchLinear-task",
            "dagger_django.definitions.tasks:DefaultTemplateDAGInstance",
            "halt",
            "EXECUTING",
            json.dumps(params),
            None,
            None,
            nodes[0]["id"],
            1,
            "[]",
            False,
            "",
            now,
            now,
            None,
            now,
        ]
        process, steps = nodes[0], nodes[1:]
        events = [
            _event(None, "NOT_STARTED", "NOT_STARTED", "created"),
            _event(None, "NOT_STARTED", "EXECUTING", "submitted"),
        ]
        process["status"], steps[0]["status"] = "EXECUTING", "SUBMITTED"
        events += [
            _event(process, "NOT_STARTED", "EXECUTING", "started"),
            _event(steps[0], "NOT_STARTED", "SUBMITTED", "submitted"),
        ]
        with self.conn.transaction(), self.conn.cursor() as cur:  # create + submit
            if self.document:
                self._x(
                    cur,
                    f"INSERT INTO {self.s}.workflow ({WF_COLS}, nodes, node_pages, leased_since) VALUES"
                    f" ({', '.join(['%s'] * 21)})",
                    [*wf, _doc(nodes), 0, _leased_since(nodes)],
                    1,
                )
            else:
                self._x(
                    cur, f"INSERT INTO {self.s}.workflow ({WF_COLS}) VALUES ({', '.join(['%s'] * 18)})", wf, 1
                )
                self._xm(
                    cur,
                    f"INSERT INTO {self.s}.node ({NODE_COLS}) VALUES ({', '.join(['%s'] * 23)})",
                    [
                        [
                            n[c.strip()]
                            if c.strip() not in ("next_ids", "child_ids", "config")
                            else json.dumps(n[c.strip()])
                            for c in NODE_COLS.split(",")
                        ]
                        for n in nodes
                    ],
                )
            self._history(cur, wid, now, events)
        # the claim of step 1, then three applies (each claims the next step inline)
        for i in range(STEPS + 1):
            now = dt.datetime.now(dt.UTC)
            changed: list[dict[str, Any]] = []
            events = []
            if i > 0:
                done = steps[i - 1]
                done.update(status="COMPLETED", time_completed=now, updated_at=now)
                params[f"s{i - 1}"] = i  # each step leaves a runtime parameter
                changed.append(done)
                events.append(_event(done, "EXECUTING", "COMPLETED", "completed"))
            if i < STEPS:
                step = steps[i]
                frm = step["status"]
                step.update(
                    status="EXECUTING", attempts=1, lease=f"lease-{i}", time_submitted=now, updated_at=now
                )
                changed.append(step)
                events.append(_event(step, frm, "EXECUTING", "claimed"))
            else:
                process.update(status="COMPLETED", time_completed=now, updated_at=now)
                changed.append(process)
                events.append(_event(process, "EXECUTING", "COMPLETED", "completed"))
                events.append(_event(None, "EXECUTING", "COMPLETED", "completed"))
            with self.conn.transaction(), self.conn.cursor() as cur:
                self._x(cur, f"SELECT * FROM {self.s}.workflow WHERE id = %s FOR UPDATE", [wid])
                cur.fetchall()
                if self.document:
                    fields = "nodes = %s, leased_since = %s, updated_at = %s"
                    values: list[Any] = [_doc(nodes), _leased_since(nodes), now]
                    if i > 0:
                        fields += ", runtime_parameters = %s, update_count = update_count + 1"
                        values.append(json.dumps(params))
                    if i == STEPS:
                        fields += ", status = 'COMPLETED', time_completed = %s"
                        values.append(now)
                    self._x(cur, f"UPDATE {self.s}.workflow SET {fields} WHERE id = %s", [*values, wid], 1)
                else:
                    self._x(cur, f"SELECT * FROM {self.s}.node WHERE workflow_id = %s", [wid])
                    cur.fetchall()
                    if i > 0:
                        fields = "runtime_parameters = %s, update_count = update_count + 1, updated_at = %s"
                        values = [json.dumps(params), now]
                        if i == STEPS:
                            fields += ", status = 'COMPLETED', time_completed = %s"
                            values.append(now)
                        self._x(
                            cur, f"UPDATE {self.s}.workflow SET {fields} WHERE id = %s", [*values, wid], 1
                        )
                    sql = f"UPDATE {self.s}.node SET {NODE_SET} WHERE id = %s"
                    if len(changed) == 1:
                        self._x(cur, sql, self._node_params(changed[0]), 1)
                    else:
                        self._xm(cur, sql, [self._node_params(n) for n in changed])
                self._history(cur, wid, now, events)


def _bytes(conn: Any, schema: str) -> int:
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace s"
            " ON s.oid = c.relnamespace WHERE s.nspname = %s AND c.relkind = 'r'",
            [schema],
        )
        return int(cur.fetchone()[0])


def run_layout(conn: Any, schema: str, document: bool, n: int, template_id: int) -> dict[str, Any]:
    with conn.cursor() as cur:
        _schema(cur, schema, document)
    conn.autocommit = False
    conn.commit()
    conn.autocommit = True
    layout = Layout(conn, schema, document)
    with conn.cursor() as cur:
        pg0 = _backend_cpu(cur)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        layout.run_workflow(template_id)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    with conn.cursor() as cur:
        pg1 = _backend_cpu(cur)
        cur.execute(f"VACUUM FULL {schema}.workflow")
        cur.execute(f"VACUUM FULL {schema}.history")
        if not document:
            cur.execute(f"VACUUM FULL {schema}.node")
    size = _bytes(conn, schema)
    return {
        "rows_per_workflow": layout.rows / n,
        "statements_per_workflow": layout.statements / n,
        "postgres_cpu_ms": round((pg1 - pg0) * 1000 / n, 2),
        "client_cpu_ms": round(cpu * 1000 / n, 2),
        "bytes_per_workflow": round(size / n),
        "workflows_per_s": round(n / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rowstate", description=__doc__)
    parser.add_argument("--n", type=int, default=500, help="workflows per layout and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from .harness import BENCH_SECRET_KEY, prepare_database

    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DB)
    env.setdefault("DJANGO_SECRET_KEY", BENCH_SECRET_KEY)
    prepare_database(env)  # the engine's tables, whose shapes the scratch tables copy
    import psycopg

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        with conn.cursor() as cur:  # a template row for the workflows' key (no constraint is copied)
            cur.execute("SELECT coalesce(max(id), 0) FROM dagger_django_workflowtemplate")
            template_id = cur.fetchone()[0]
        try:
            for r in range(args.rounds):
                order = [("rows", False), ("document", True)]
                if r % 2:
                    order.reverse()
                for name, document in order:
                    out = run_layout(conn, f"bench_rowstate_{name}", document, args.n, template_id)
                    print(
                        f"round {r + 1} {name:8s} " + ", ".join(f"{k} {v}" for k, v in out.items()),
                        flush=True,
                    )
        finally:
            with conn.cursor() as cur:
                for name in ("rows", "document"):
                    cur.execute(f"DROP SCHEMA IF EXISTS bench_rowstate_{name} CASCADE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
