"""W4 scale: many waiting listeners and workflow rows, and what reads and routing cost at that size.

Command (PostgreSQL on this machine; no Celery worker and no Kafka broker are needed)::

    .venv/bin/python -m benchmarks.scale --workflows 1000000 --loaders 2

1. **Load.** Empties the workflow tables of its own database (``dagger_scale`` unless
   DATABASE_URL is set), then ``--loaders`` processes create ``--workflows`` workflows of the
   bridge benchmark's template (``benchmarks/bridge_workflows.py``: its first node is the Kafka
   listener correlated by ``order_id``) through ``template.create_instance(...)`` - the engine's
   own code path, one transaction per workflow, each leaving a waiting listener and its
   Subscription row. The loaders use the in-memory dispatcher, so no Celery is involved (a
   waiting listener hands nothing to a worker anyway). Progress is printed every 10%.
   Then ``VACUUM ANALYZE`` of the dagger tables (what autovacuum would do after such a load).
2. **Measure** at that size:

   * database size: ``pg_total_relation_size`` of every ``dagger_django_*`` table, total and
     per waiting workflow;
   * correlation lookup: the engine's own lookup (``engine.messages._match``, the one ORM query
     ``messages_route`` runs per batch) for one message with a random existing key, 1,000 samples;
   * admin changelist ``/admin/dagger_django/workflow/``, first page and ``?q=<business key>``,
     20 requests each; API list ``GET /api/dagger/workflows/?limit=50`` and ``&key=<business
     key>``, 50 requests each; all through ``django.test.Client`` as a logged-in superuser;
   * routing: 2,000 messages for distinct random waiting workflows through ``messages_route``
     in batches of ``--route-batch`` (inbox rows and deliveries written; the deliveries stay
     queued in the in-memory dispatcher, no listener runs).

Prints a table and writes ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/dagger_scale"
PREFIX = "scale"
LOOKUP_SAMPLES = 1000
ROUTE_MESSAGES = 2000
API_REQUESTS = 50
ADMIN_REQUESTS = 20
REPORT_EVERY = 500


def _order(i: int) -> str:
    return f"{PREFIX}-{i}"


# -- load ----------------------------------------------------------------------------------------------------------
def _loader(start: int, stop: int, progress: Any, every: int) -> None:
    """One loader process: its own Django setup and database connection."""
    import django

    django.setup()
    from dagger_django import Dagger
    from dagger_django.adapters.memory import InMemoryDispatcher
    from dagger_django.engine import ports

    from .bridge_workflows import TEMPLATE

    # The in-memory dispatcher, but the real clock (engine_under_test() would freeze time_created).
    dispatcher = InMemoryDispatcher()
    ports.set_dispatcher(dispatcher)
    template = Dagger.get_template(TEMPLATE)
    pending = 0
    for i in range(start, stop):
        template.create_instance(partition_key_lookup="order_id", submit_task=True, order_id=_order(i))
        pending += 1
        if pending == every:
            progress.put(pending)
            pending = 0
            dispatcher.runs.clear()
            dispatcher.sent.clear()
    progress.put(pending)
    from django.db import connection

    connection.close()


def load(n: int, loaders: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    every = max(1, min(REPORT_EVERY, n // (loaders * 40)))
    bounds = [n * k // loaders for k in range(loaders + 1)]
    procs = [
        ctx.Process(
            target=_loader, args=(bounds[k], bounds[k + 1], progress, every), name=f"scale-loader-{k}"
        )
        for k in range(loaders)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    done, next_mark = 0, 1
    while done < n:
        try:
            done += progress.get(timeout=5)
        except queue.Empty:  # check that the loaders are still alive
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"loader {dead[0].name} exited with {dead[0].exitcode}") from None
            continue
        while next_mark <= 10 and done >= n * next_mark // 10:
            elapsed = time.monotonic() - started
            print(
                f"  loaded {done:>9,} / {n:,} ({next_mark * 10:>3}%)  {elapsed:7.1f} s"
                f"  {done / elapsed:7.1f} workflows/s",
                flush=True,
            )
            next_mark += 1
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"loader {p.name} exited with {p.exitcode}")
    seconds = time.monotonic() - started
    return {
        "workflows": n,
        "loaders": loaders,
        "seconds": round(seconds, 1),
        "workflows_per_s": round(n / seconds, 1),
    }


# -- measurements --------------------------------------------------------------------------------------------------
def _ms(values: list[float]) -> dict[str, float]:
    from .harness import summary

    return {k: round(v * 1000, 3) for k, v in summary(values).items()}


def _vacuum() -> float:
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'dagger\\_django\\_%%'")
        tables = [row[0] for row in cursor.fetchall()]
        for table in tables:
            cursor.execute(f'VACUUM ANALYZE "{table}"')
    return round(time.monotonic() - started, 1)


def db_size(n: int) -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace s ON s.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND s.nspname = current_schema() AND c.relname LIKE 'dagger\\_django\\_%%'"
            " ORDER BY 2 DESC"
        )
        tables = {name: size for name, size in cursor.fetchall()}
        cursor.execute("SELECT count(*) FROM dagger_django_subscription")
        subscriptions = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM dagger_django_workflow")
        workflows = cursor.fetchone()[0]
        # Nodes live in their workflow's row and its node pages (docs/internals.md).
        cursor.execute(
            "SELECT coalesce(sum(jsonb_array_length(nodes)), 0) FROM dagger_django_workflow"
            " UNION ALL SELECT coalesce(sum(jsonb_array_length(nodes)), 0) FROM dagger_django_nodepage"
        )
        nodes = sum(int(row[0]) for row in cursor.fetchall())

    total = sum(tables.values())
    return {
        "total_bytes": total,
        "total_mb": round(total / 1024 / 1024, 1),
        "bytes_per_workflow": round(total / n) if n else None,
        "rows": {"workflows": workflows, "nodes": nodes, "subscriptions": subscriptions},
        "tables_bytes": {k: v for k, v in tables.items() if v > 64 * 1024},
    }


def correlation_lookup(n: int, samples: int) -> dict[str, Any]:
    from dagger_django.engine import messages

    from .bridge_workflows import TOPIC

    timings, misses = [], 0
    for i in random.sample(range(n), min(samples, n)):
        plan = messages._prepare(messages.Incoming(topic=TOPIC, payload={"order_id": _order(i)}), strict=True)
        started = time.perf_counter()
        messages._match([plan])
        timings.append(time.perf_counter() - started)
        misses += not plan.targets
    return {"samples": len(timings), "not_found": misses, "ms": _ms(timings)}


def _time_get(client: Any, urls: list[str]) -> dict[str, Any]:
    timings = []
    client.get(urls[0])  # warm-up (URL resolving, template loading)
    for url in urls:
        started = time.perf_counter()
        response = client.get(url)
        timings.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.content[:300]!r}")
    return {"requests": len(urls), "ms": _ms(timings)}


def http_reads(n: int) -> dict[str, Any]:
    from .harness import superuser_client

    client = superuser_client("scale-bench")

    def keys(count: int) -> list[str]:
        return [_order(random.randrange(n)) for _ in range(count)]

    api = "/api/dagger/workflows/"
    admin = "/admin/dagger_django/workflow/"
    return {
        "api_list": _time_get(client, [f"{api}?limit=50"] * API_REQUESTS),
        "api_list_by_key": _time_get(client, [f"{api}?limit=50&key={k}" for k in keys(API_REQUESTS)]),
        "admin_changelist": _time_get(client, [admin] * ADMIN_REQUESTS),
        "admin_changelist_search": _time_get(client, [f"{admin}?q={k}" for k in keys(ADMIN_REQUESTS)]),
    }


def routing(n: int, count: int, batch: int) -> dict[str, Any]:
    from dagger_django.adapters.memory import InMemoryDispatcher
    from dagger_django.engine import messages, ports
    from dagger_django.models import Delivery

    from .bridge_workflows import TOPIC

    dispatcher = InMemoryDispatcher()
    previous = ports.set_dispatcher(dispatcher)
    orders = [_order(i) for i in random.sample(range(n), min(count, n))]
    batches = [orders[i : i + batch] for i in range(0, len(orders), batch)]
    statuses: dict[str, int] = {}
    try:
        started = time.perf_counter()
        for chunk in batches:
            routed = messages.messages_route(
                [
                    messages.Incoming(
                        topic=TOPIC,
                        payload={"order_id": order, "sent_at": time.time()},
                        source="http",
                        message_id=uuid.uuid4().hex,
                    )
                    for order in chunk
                ]
            )
            for r in routed:
                key = str(getattr(r.status, "value", r.status))
                statuses[key] = statuses.get(key, 0) + 1
        seconds = time.perf_counter() - started
    finally:
        ports.set_dispatcher(previous)
    return {
        "messages": len(orders),
        "batch_size": batch,
        "seconds": round(seconds, 3),
        "messages_per_s": round(len(orders) / seconds, 1),
        "statuses": statuses,
        "deliveries_written": Delivery.objects.count(),
        "deliveries_queued_in_memory": len(dispatcher.runs),
    }


# -- main ----------------------------------------------------------------------------------------------------------
def _reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE dagger_django_workflow, dagger_django_inboxmessage, dagger_django_outboxmessage CASCADE"
        )


def _print(report: dict[str, Any]) -> None:
    ld, size, look, http, route = (
        report["load"],
        report["db_size"],
        report["correlation_lookup"],
        report["http"],
        report["routing"],
    )
    print(f"\nW4 scale at {ld['workflows']:,} waiting workflows ({size['rows']})")
    print(f"  {'load (create_instance, ' + str(ld['loaders']) + ' loaders)':<48}{ld['workflows_per_s']:>10} workflows/s"
          f"  ({ld['seconds']} s)")  # fmt: skip
    print(f"  {'database size, dagger_django_* tables':<48}{size['total_mb']:>10} MB"
          f"  ({size['bytes_per_workflow']:,} bytes per waiting workflow)")  # fmt: skip
    print(f"  {'':<48}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    rows = [
        ("correlation lookup (messages._match, 1 key)", look["ms"]),
        ("GET /api/dagger/workflows/?limit=50", http["api_list"]["ms"]),
        ("GET /api/dagger/workflows/?limit=50&key=...", http["api_list_by_key"]["ms"]),
        ("admin workflow changelist, first page", http["admin_changelist"]["ms"]),
        ("admin workflow changelist, ?q=<business key>", http["admin_changelist_search"]["ms"]),
    ]
    for label, ms in rows:
        print(f"  {label:<48}{ms['p50']:>10.2f}{ms['p99']:>10.2f}{ms['max']:>10.2f}")
    print(f"  {'messages_route, batches of ' + str(route['batch_size']):<48}{route['messages_per_s']:>10} messages/s"
          f"  ({route['messages']} messages, {route['statuses']})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--workflows", type=int, default=1_000_000, help="waiting workflows to load")
    parser.add_argument("--loaders", type=int, default=2, help="loader processes")
    parser.add_argument("--route-batch", type=int, default=500, help="messages per messages_route call")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args(argv)
    random.seed(args.seed)

    env = dict(os.environ)
    from .harness import BENCH_SECRET_KEY

    env.setdefault("DATABASE_URL", DEFAULT_DB)
    # The demo settings refuse to start without a secret key once DATABASE_URL is set.
    env.setdefault("DJANGO_SECRET_KEY", BENCH_SECRET_KEY)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["DJANGO_DEBUG"] = "0"  # no query log growing in the loaders, no debug pages
    env["LOG_LEVEL"] = "WARNING"
    os.environ.update(env)

    from .harness import prepare_database

    prepare_database(env)

    import django

    django.setup()
    from .harness import machine

    _reset()
    report: dict[str, Any] = {
        "command": "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
    }
    print(
        f"loading {args.workflows:,} waiting workflows with {args.loaders} loader processes ...", flush=True
    )
    report["load"] = load(args.workflows, args.loaders)
    print("VACUUM ANALYZE ...", flush=True)
    report["vacuum_analyze_s"] = _vacuum()
    report["db_size"] = db_size(args.workflows)
    print("correlation lookups ...", flush=True)
    report["correlation_lookup"] = correlation_lookup(args.workflows, LOOKUP_SAMPLES)
    print("API and admin requests ...", flush=True)
    report["http"] = http_reads(args.workflows)
    print("routing ...", flush=True)
    report["routing"] = routing(args.workflows, ROUTE_MESSAGES, args.route_batch)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
