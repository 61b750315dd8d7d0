"""Pages at a million workflows: how long the admin and API pages take with that many rows.

Command (PostgreSQL on this machine; no Celery worker and no Kafka broker are needed)::

    .venv/bin/python -m benchmarks.pages --workflows 1000000     # the documented size
    .venv/bin/python -m benchmarks.pages --workflows 20000       # the quick mode (the test's)
    .venv/bin/python -m benchmarks.pages --reuse                 # measure again, no seeding

1. **Seed.** Empties the workflow tables of its own database (``dagger_pages`` unless
   DATABASE_URL is set). Runs eleven prototype workflows of three templates
   (``benchmarks/pages_workflows.py``) through the engine with the in-memory dispatcher and a
   frozen clock, so that each ends in a state the pages show: completed, waiting on a Kafka
   listener (a Subscription row), waiting on a timer (a PENDING Timer row), failed, stopped by
   an operator, stuck with a task SUBMITTED, not started. Then copies them ``--workflows`` times
   in SQL (``INSERT ... SELECT`` over ``generate_series``, ``--chunk`` workflows per statement):
   every workflow with its nodes (ids renamed, links kept), history records (node ids in the
   events renamed), timers and subscriptions, its times shifted so that creation times spread
   over the last 30 days, its business key made unique. Which prototype a copy follows is a
   hash of its number, weighted: 58 % completed, 16 % waiting on a listener, 8 % on a timer,
   8 % failed, 4 % stopped, 3 % stuck, 3 % not started. Then ``VACUUM ANALYZE``.
2. **Measure**, warm (one request first, not counted), ``--requests`` requests of each page
   through ``django.test.Client`` as a logged-in superuser: median and p95 in ms, the number of
   queries of one request, the slowest query seen (and its ``EXPLAIN ANALYZE`` when it took
   more than 50 ms). Pages: the admin workflow list (default, by status, by template, the
   stuck filter, searched by id and by business key), the admin workflow page, the API list
   (default, ``?status=``, ``?stuck_for=``), the API detail and history, and the original's
   ``/tasks/instances`` and ``/tasks/instance/{id}`` (``dagger_django.api.compat``).

Prints a table and writes ``benchmarks/results/pages.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import percentile

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/dagger_pages"
SLOW_MS = 50.0
#: How many prototypes :func:`make_prototypes` runs (they stay in the table beside the copies).
PROTOTYPES = 11
SPAN_DAYS = 30
#: Tables copied with each workflow (every other table referencing workflows stays empty).
CHILD_TABLES = (
    "dagger_django_nodepage",
    "dagger_django_historyrecord",
    "dagger_django_timer",
    "dagger_django_subscription",
)


def wf_id(i: int) -> uuid.UUID:
    """The id of seeded workflow number ``i`` (the SQL computes the same)."""
    return uuid.UUID(hashlib.md5(f"pages-wf-{i}".encode()).hexdigest())


# ==================================================================================================
# seed
# ==================================================================================================
@dataclass(frozen=True)
class Prototype:
    label: str
    workflow_id: uuid.UUID
    weight: int
    #: The prefix of the copies' business keys ("" for a template without one).
    key_prefix: str


def make_prototypes() -> list[Prototype]:
    """Run the eleven prototypes through the engine (in-memory dispatcher, frozen clock)."""
    from dagger_django import Dagger
    from dagger_django.engine import messages, services
    from dagger_django.models import Status, Workflow
    from dagger_django.testing import engine_under_test

    from . import pages_workflows as pw

    order, refund, nightly = (Dagger.get_template(n) for n in (pw.ORDER, pw.REFUND, pw.NIGHTLY))
    made: list[Prototype] = []
    with engine_under_test() as (dispatcher, clock):

        def settle(rounds: int = 12, seconds: float = 600) -> None:
            """Run what is due, moving the clock on (retries back off) until nothing is left."""
            for _ in range(rounds):
                dispatcher.drain()
                clock.advance(seconds=seconds)
            dispatcher.drain()

        def new_order(label: str, *, remind_in: float, **params: Any) -> Any:
            key = f"proto-{label}"
            return order.create_instance(
                partition_key_lookup="order_id",
                submit_task=True,
                order_id=key,
                remind_at=clock.now().timestamp() + remind_in,
                **params,
            )

        def pay(key: str) -> None:
            clock.advance(seconds=7)
            messages.message_receive(topic=pw.ORDER_TOPIC, payload={"order_id": key, "amount": 42})

        wf = new_order("order-done", remind_in=120)
        dispatcher.drain()
        pay("proto-order-done")
        settle()
        made.append(Prototype("order completed", wf.id, 30, "order"))

        wf = new_order("order-waiting", remind_in=120)
        dispatcher.drain()
        made.append(Prototype("order waiting on a listener", wf.id, 10, "order"))

        wf = new_order("order-timer", remind_in=(SPAN_DAYS + 30) * 86_400)
        dispatcher.drain()
        pay("proto-order-timer")
        dispatcher.drain()
        made.append(Prototype("order waiting on a timer", wf.id, 8, "order"))

        wf = new_order("order-failed", remind_in=120, fail=True)
        dispatcher.drain()
        pay("proto-order-failed")
        settle()
        made.append(Prototype("order failed", wf.id, 6, "order"))

        wf = new_order("order-stopped", remind_in=120)
        dispatcher.drain()
        clock.advance(seconds=3600)
        services.workflow_stop(workflow_id=wf.id, actor="ops", reason="customer cancelled")
        dispatcher.drain()
        made.append(Prototype("order stopped", wf.id, 4, "order"))

        for label, weight in (("refund-done", 12), ("refund-waiting", 6)):
            wf = refund.create_instance(
                partition_key_lookup="refund_id", submit_task=True, refund_id=f"proto-{label}"
            )
            dispatcher.drain()
            if label == "refund-done":
                clock.advance(seconds=30)
                messages.message_receive(topic=pw.REFUND_TOPIC, payload={"refund_id": f"proto-{label}"})
                settle()
            made.append(
                Prototype(label.replace("-", " ").replace("done", "completed"), wf.id, weight, "refund")
            )

        wf = nightly.create_instance(submit_task=True)
        settle(rounds=1)
        made.append(Prototype("nightly completed", wf.id, 16, ""))
        wf = nightly.create_instance(submit_task=True, fail=True)
        settle()
        made.append(Prototype("nightly failed", wf.id, 2, ""))
        wf = nightly.create_instance(submit_task=True)
        dispatcher.runs.clear()  # its first task's message is lost: SUBMITTED for good (stuck)
        made.append(Prototype("nightly stuck", wf.id, 3, ""))
        wf = nightly.create_instance(submit_task=False)
        made.append(Prototype("nightly not started", wf.id, 3, ""))
        dispatcher.runs.clear()

    expected = {
        "order completed": Status.COMPLETED,
        "order failed": Status.FAILURE,
        "order stopped": Status.STOPPED,
        "nightly failed": Status.FAILURE,
        "nightly stuck": Status.EXECUTING,
        "order waiting on a timer": Status.EXECUTING,
    }
    statuses = dict(Workflow.objects.filter(id__in=[p.workflow_id for p in made]).values_list("id", "status"))
    for proto in made:
        want = expected.get(proto.label)
        if want is not None and statuses[proto.workflow_id] != want:
            raise RuntimeError(f"prototype {proto.label!r} ended {statuses[proto.workflow_id]}, not {want}")
    assert sum(p.weight for p in made) == 100 and len(made) == PROTOTYPES
    return made


def _columns(cursor: Any, table: str) -> list[tuple[str, str]]:
    cursor.execute(
        "SELECT column_name, data_type, is_identity FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
        [table],
    )
    return [(name, kind) for name, kind, identity in cursor.fetchall() if identity != "YES"]


def _node(expr: str) -> str:
    """The copy's id of a prototype's node id ``expr`` (NULL stays NULL)."""
    return f"md5(pl.wf::text || ({expr})::text)::uuid"


def _node_array(expr: str) -> str:
    return (
        f"(SELECT coalesce(jsonb_agg({_node('e')}::text ORDER BY o), '[]'::jsonb)"
        f" FROM jsonb_array_elements_text({expr}) WITH ORDINALITY AS x(e, o))"
    )


def _node_document(expr: str) -> str:
    """The copy of a node document (``Workflow.nodes``, ``NodePage.nodes``: a list of nodes, each
    a list in the order of ``models.NODE_FIELDS``) with the copy's node ids: id (0), parent (1),
    next ids (8) and child ids (9)."""
    node = (
        "jsonb_set(jsonb_set(jsonb_set(jsonb_set(nd.n,"
        f" '{{0}}', to_jsonb({_node('nd.n->>0')}::text)),"
        f" '{{1}}', coalesce(to_jsonb({_node('nd.n->>1')}::text), 'null'::jsonb)),"
        f" '{{8}}', {_node_array('nd.n->8')}),"
        f" '{{9}}', {_node_array('nd.n->9')})"
    )
    return (
        f"(SELECT coalesce(jsonb_agg({node} ORDER BY nd.no), '[]'::jsonb)"
        f" FROM jsonb_array_elements({expr}) WITH ORDINALITY AS nd(n, no))"
    )


#: Per table, the columns a copy does not take from its prototype as they are.
OVERRIDES: dict[str, dict[str, str]] = {
    "dagger_django_workflow": {
        "id": "pl.wf",
        "business_key": "CASE WHEN p.business_key IS NULL THEN NULL ELSE pl.bkey END",
        "runtime_parameters": "CASE WHEN p.partition_key_lookup IS NULL THEN p.runtime_parameters"
        " ELSE p.runtime_parameters || jsonb_build_object(p.partition_key_lookup, pl.bkey) END",
        "root_node_id": _node("p.root_node_id"),
        "deferred_node_ids": _node_array("p.deferred_node_ids"),
        "nodes": _node_document("p.nodes"),
    },
    "dagger_django_nodepage": {
        "workflow_id": "pl.wf",
        "nodes": _node_document("p.nodes"),
    },
    "dagger_django_historyrecord": {
        "workflow_id": "pl.wf",
        "events": "(SELECT jsonb_agg(CASE WHEN ev->>0 IS NULL THEN ev"
        f" ELSE jsonb_set(ev, '{{0}}', to_jsonb({_node('ev->>0')}::text)) END ORDER BY o)"
        " FROM jsonb_array_elements(p.events) WITH ORDINALITY AS x(ev, o))",
    },
    "dagger_django_timer": {
        "workflow_id": "pl.wf",
        "node_id": _node("p.node_id"),
        # A pending timer stays due in the future (no sweep runs here, but a page may show it).
        "due_at": "CASE WHEN p.status = 'PENDING' THEN p.due_at ELSE p.due_at + pl.shift END",
    },
    "dagger_django_subscription": {
        "workflow_id": "pl.wf",
        "node_id": _node("p.node_id"),
        "key_value": "CASE WHEN p.key_value IS NULL THEN NULL ELSE pl.bkey END",
    },
}


def _copy_sql(cursor: Any, table: str) -> str:
    overrides = OVERRIDES[table]
    names, exprs = [], []
    for name, kind in _columns(cursor, table):
        names.append(f'"{name}"')
        if name in overrides:
            exprs.append(overrides[name])
        elif kind.startswith("timestamp"):
            exprs.append(f'p."{name}" + pl.shift')
        else:
            exprs.append(f'p."{name}"')
    join = "p.id = pl.proto" if table == "dagger_django_workflow" else "p.workflow_id = pl.proto"
    order = " ORDER BY pl.i, p.id" if table != "dagger_django_workflow" else " ORDER BY pl.i"
    return (
        f'INSERT INTO "{table}" ({", ".join(names)}) SELECT {", ".join(exprs)}'
        f" FROM pages_plan pl JOIN {table} p ON {join}{order}"
    )


def seed(n: int, *, chunk: int = 50_000, vacuum: bool = True, progress: bool = True) -> dict[str, Any]:
    """Empty the workflow tables and seed ``n`` workflows copied from the prototypes."""
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE dagger_django_workflow, dagger_django_inboxmessage, dagger_django_outboxmessage CASCADE"
        )
    protos = make_prototypes()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS pages_proto, pages_plan")
        cursor.execute(
            "CREATE TEMP TABLE pages_proto (bucket int PRIMARY KEY, proto uuid, created timestamptz, prefix text)"
        )
        bucket = 0
        for proto in protos:
            for _ in range(proto.weight):
                cursor.execute(
                    "INSERT INTO pages_proto SELECT %s, id, time_created, %s FROM dagger_django_workflow WHERE id = %s",
                    [bucket, proto.key_prefix, proto.workflow_id],
                )
                bucket += 1
        cursor.execute(
            "CREATE TEMP TABLE pages_plan (i bigint, proto uuid, wf uuid, shift interval, bkey text)"
        )
        statements = {table: _copy_sql(cursor, table) for table in ("dagger_django_workflow", *CHILD_TABLES)}
        cursor.execute("SELECT now()")
        end = cursor.fetchone()[0]
        for lo in range(1, n + 1, chunk):
            hi = min(n, lo + chunk - 1)
            cursor.execute("TRUNCATE pages_plan")
            # Copy i was created at end - (n - i) / n * SPAN_DAYS: the newest has the highest number.
            cursor.execute(
                "INSERT INTO pages_plan"
                " SELECT g, pp.proto, md5('pages-wf-' || g)::uuid,"
                "  (%s::timestamptz - (%s - g) * %s * interval '1 second') - pp.created,"
                "  pp.prefix || '-' || g"
                " FROM generate_series(%s::bigint, %s::bigint) g"
                " JOIN pages_proto pp ON pp.bucket = (hashint8(g) & 2147483647) %% 100",
                [end, n, SPAN_DAYS * 86_400 / max(n, 1), lo, hi],
            )
            for sql in statements.values():
                cursor.execute(sql)
            if progress:
                elapsed = time.monotonic() - started
                print(
                    f"  seeded {hi:>9,} / {n:,}  {elapsed:7.1f} s  {hi / elapsed:8.0f} workflows/s",
                    flush=True,
                )
        cursor.execute("DROP TABLE pages_proto, pages_plan")
    seeded_s = time.monotonic() - started
    analyze_s = _analyze(vacuum=vacuum)
    return {
        "workflows": n,
        "seconds": round(seeded_s, 1),
        "workflows_per_s": round(n / seeded_s, 1) if seeded_s else None,
        "analyze_s": analyze_s,
        "prototypes": [{"label": p.label, "weight_pct": p.weight} for p in protos],
        "rows": _rows(),
    }


def _analyze(*, vacuum: bool) -> float:
    """``VACUUM ANALYZE`` the dagger tables (``ANALYZE`` inside a transaction, as in a test)."""
    from django.db import connection

    started = time.monotonic()
    verb = "VACUUM ANALYZE" if vacuum and not connection.in_atomic_block else "ANALYZE"
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'dagger\\_django\\_%%'")
        for (table,) in cursor.fetchall():
            cursor.execute(f'{verb} "{table}"')
    return round(time.monotonic() - started, 1)


def _rows() -> dict[str, int]:
    from django.db import connection

    rows = {}
    with connection.cursor() as cursor:
        for table in ("dagger_django_workflow", *CHILD_TABLES):
            cursor.execute(f'SELECT count(*) FROM "{table}"')
            rows[table.removeprefix("dagger_django_")] = cursor.fetchone()[0]
        cursor.execute("SELECT status, count(*) FROM dagger_django_workflow GROUP BY 1 ORDER BY 2 DESC")
        rows.update({f"status {status}": count for status, count in cursor.fetchall()})
    return rows


# ==================================================================================================
# measure
# ==================================================================================================
def _explain(sql: str, params: Any) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


class QueryTimer:
    """An execute wrapper: every query of the block with its time (``perf_counter``, not the
    millisecond-rounded time of Django's query log)."""

    def __init__(self) -> None:
        self.queries: list[tuple[float, str, Any]] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.queries.append(((time.perf_counter() - started) * 1000, sql, params))


def time_page(client: Any, urls: list[str], *, explain_over_ms: float = SLOW_MS) -> dict[str, Any]:
    """GET each of ``urls`` after one warm-up request of the first: median and p95 ms, queries
    per request (of the last), the slowest query seen and its plan when it is slow."""
    from django.db import connection

    response = client.get(urls[0])
    if response.status_code != 200:
        raise RuntimeError(f"GET {urls[0]}: {response.status_code} {response.content[:300]!r}")
    timings: list[float] = []
    slowest: tuple[float, str, Any] = (0.0, "", None)
    queries = 0
    for url in urls:
        timer = QueryTimer()
        with connection.execute_wrapper(timer):
            started = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.content[:300]!r}")
        queries = len(timer.queries)
        slowest = max([slowest, *timer.queries], key=lambda q: q[0])
    ms, sql, params = slowest
    result: dict[str, Any] = {
        "url": urls[0],
        "requests": len(urls),
        "median_ms": round(statistics.median(timings), 2),
        "p95_ms": round(percentile(timings, 95), 2),
        "queries": queries,
        "slowest_sql": {"ms": round(ms, 2), "sql": connection.ops.compose_sql(sql, params) if sql else ""},
    }
    if ms > explain_over_ms and sql.lstrip().upper().startswith("SELECT"):
        result["explain"] = _explain(sql, params)
    return result


def _sample(n: int, count: int, rng: random.Random) -> list[int]:
    return [rng.randint(1, n) for _ in range(count)]


def measure(n: int, *, requests: int = 20, seed: int = 11) -> dict[str, dict[str, Any]]:
    """Time every page of the brief at the current size (``n`` seeded workflows)."""
    from dagger_django.models import Status, Workflow

    from . import pages_workflows as pw
    from .harness import superuser_client

    rng = random.Random(seed)
    client = superuser_client("pages-bench")
    admin = "/admin/dagger_django/workflow/"
    api = "/api/dagger/workflows/"
    ids = [wf_id(i) for i in _sample(n, requests, rng)]
    keyed = list(
        Workflow.objects.filter(id__in=[wf_id(i) for i in _sample(n, requests * 4, rng)])
        .exclude(business_key=None)
        .values_list("business_key", flat=True)[:requests]
    )
    pages = {
        "admin list": [admin] * requests,
        "admin list, status=FAILURE": [f"{admin}?status__exact={Status.FAILURE}"] * requests,
        f"admin list, template={pw.REFUND}": [f"{admin}?template_name={pw.REFUND}"] * requests,
        "admin list, stuck 1 h": [f"{admin}?stuck=1h"] * requests,
        "admin search, id": [f"{admin}?q={pk}" for pk in ids],
        "admin search, business key": [f"{admin}?q={key}" for key in keyed],
        "admin workflow page": [f"{admin}{pk}/change/" for pk in ids],
        "API list": [api] * requests,
        "API list, status=FAILURE": [f"{api}?status={Status.FAILURE}"] * requests,
        "API list, stuck_for=3600": [f"{api}?stuck_for=3600"] * requests,
        "API detail": [f"{api}{pk}/" for pk in ids],
        "API history": [f"{api}{pk}/history/" for pk in ids],
        # The original's endpoints (dagger_django.api.compat): a page of 50 whole workflows.
        "/tasks/instances": ["/tasks/instances"] * requests,
        "/tasks/instance/{id}": [f"/tasks/instance/{pk}" for pk in ids],
    }
    return {label: time_page(client, urls) for label, urls in pages.items()}


def run(n: int, *, requests: int = 20, reuse: bool = False, chunk: int = 50_000) -> dict[str, Any]:
    """Seed (unless ``reuse``) and measure: the report :func:`main` prints and writes."""
    report: dict[str, Any] = {}
    if reuse:
        from dagger_django.models import Workflow

        # Every workflow but the prototypes is a copy, numbered from 1.
        n = Workflow.objects.count() - PROTOTYPES
        report["seed"] = {"workflows": n, "reused": True, "rows": _rows()}
    else:
        report["seed"] = seed(n, chunk=chunk)
    report["pages"] = measure(n, requests=requests)
    return report


def _print(report: dict[str, Any]) -> None:
    s = report["seed"]
    print(f"\nPages at {s['workflows']:,} workflows ({s['rows']})")
    if not s.get("reused"):
        print(
            f"  seeded in {s['seconds']} s ({s['workflows_per_s']} workflows/s), analyze {s['analyze_s']} s"
        )
    if "load_average_1m" in report:
        print(f"  load average (1 min) after the measurements: {report['load_average_1m']}")
    print(f"  {'page':<40}{'median ms':>10}{'p95 ms':>10}{'queries':>9}{'slowest SQL ms':>16}")
    for label, row in report["pages"].items():
        print(
            f"  {label:<40}{row['median_ms']:>10.1f}{row['p95_ms']:>10.1f}{row['queries']:>9}"
            f"{row['slowest_sql']['ms']:>16.1f}"
        )
    for label, row in report["pages"].items():
        print(
            f"\n  slowest SQL of {label} ({row['slowest_sql']['ms']} ms):\n    {row['slowest_sql']['sql'][:600]}"
        )
        if "explain" in row:
            print("    EXPLAIN ANALYZE:\n      " + row["explain"].replace("\n", "\n      "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pages", description=__doc__)
    parser.add_argument("--workflows", type=int, default=1_000_000, help="workflows to seed")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--chunk", type=int, default=50_000, help="workflows copied per statement")
    parser.add_argument("--reuse", action="store_true", help="measure the workflows already seeded")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "pages.json")
    args = parser.parse_args(argv)

    from .harness import BENCH_SECRET_KEY

    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DB)
    env.setdefault("DJANGO_SECRET_KEY", BENCH_SECRET_KEY)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["DJANGO_DEBUG"] = "0"
    env["LOG_LEVEL"] = "WARNING"
    os.environ.update(env)

    from .harness import prepare_database

    prepare_database(env)

    import django

    django.setup()
    from .harness import machine

    report: dict[str, Any] = {
        "command": "python -m benchmarks.pages " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
    }
    print(
        "measuring the workflows seeded before ..."
        if args.reuse
        else f"seeding {args.workflows:,} workflows ...",
        flush=True,
    )
    report.update(run(args.workflows, requests=args.requests, reuse=args.reuse, chunk=args.chunk))
    # The machine is shared: say how busy it was (1-minute load average) when the pages were timed.
    report["load_average_1m"] = round(os.getloadavg()[0], 2)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
