"""Campaigns: SIGKILL the bridge between routing and offset commit; kill beat, and run two beats.

Bridge: listener workflows wait on ``faults_stream``; a producer sends them a steady stream of
numbered messages (no message id: the bridge dedupes by offset). Each bridge process is started
with a consumer that kills it (``crashing_consumer.py``, through the bridge's consumer factory):
after routing its k-th batch the bridge is SIGKILLed before committing the offsets, so the next
bridge reads that batch again. Every message must reach its listener exactly once.

Beat: timer workflows come due over a window while beat is SIGKILLed and restarted, and for part
of the window a second beat runs beside the first. Every timer must fire once, none twice.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from pathlib import Path

import pytest

from . import workflows as fw
from .crashing_consumer import KILL_MESSAGE, crash_env
from .fleet import Proc, Stack, stack
from .ledger import NODE_ROWS, driver_records
from .record import broken, write
from .scale import scale

pytestmark = pytest.mark.campaign

BRIDGE_KILLS = scale(2, 50)
STREAM_RATE = scale(20, 20)  # messages per second, for as long as the kills go on (a worker keeps up)
LISTENERS = scale(20, 200)
#: Messages per bridge batch: small, so a bridge routes several batches between its start and
#: its crash, and the crash comes after a random one of them.
BATCH = 50

BEAT_KILLS = scale(1, 10)
TIMERS = scale(40, 1_000)
TIMER_WINDOW = scale(10.0, 120.0)  # seconds over which the timers come due


class Stream(threading.Thread):
    """Sends numbered messages at ``rate`` per second, round-robin over the listeners, until stopped."""

    def __init__(self, bootstrap: str, keys: list[str], rate: float) -> None:
        super().__init__(daemon=True, name="stream")
        self.bootstrap, self.keys, self.rate = bootstrap, keys, rate
        self.sent = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)

    def run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        start = time.monotonic()
        n = 0
        while not self._stop_event.is_set():
            wait = start + n / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            key = self.keys[n % len(self.keys)]
            value = {"order_id": key, "n": str(n), "done": False}
            producer.produce(fw.STREAM, value=json.dumps(value).encode(), key=key)
            producer.poll(0)
            n += 1
        producer.flush(30)
        self.sent = n


def _committed_to_end(bootstrap: str, group: str) -> bool:
    from tests.kafka.conftest import KafkaClient

    return KafkaClient(bootstrap).committed_to_end(group, fw.STREAM)


def test_bridge_killed_between_routing_and_offset_commit_loses_and_doubles_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    rng = random.Random(50)
    # No worker is killed here: deliveries keep the default lease (a short one only re-sends the
    # backlog of a busy worker, see docs/reliability.md).
    with stack(tmp_path / "stack", settings={"DAGGER_DELIVERY_LEASE_SECONDS": "300"}) as s:
        s.start_worker()
        out = tmp_path / "created.jsonl"
        driver = s.start_driver(
            "--templates",
            "FaultsStream",
            "--count",
            str(LISTENERS),
            "--out",
            str(out),
            "--max-inflight",
            "100000",
        )
        assert driver.proc.wait(timeout=120) == 0, driver.log()[-3000:]
        keys = [r["id"] for r in driver_records(out)]
        wait_subscriptions(s, len(keys))

        stream = Stream(s.kafka.bootstrap, keys, STREAM_RATE)
        stream.start()
        kills, bridges = 0, 0
        bridge: Proc | None = None
        while kills < BRIDGE_KILLS:
            crash_after = rng.randint(1, 3)
            bridge = s.start_bridge(
                [fw.STREAM], f"bridge-{bridges}", "--batch-size", str(BATCH), **crash_env(crash_after)
            )
            bridges += 1
            bridge.proc.wait(timeout=120)
            assert KILL_MESSAGE in bridge.log(), bridge.log()[-3000:]
            kills += 1
        bridge = s.start_bridge([fw.STREAM], "bridge-last", "--batch-size", str(BATCH))
        time.sleep(2)
        stream.stop()
        messages = stream.sent
        # The listeners are done once the last message of each says so.
        finish = {fw.STREAM: [{"order_id": key, "n": f"done-{key}", "done": True} for key in keys]}
        _send(s.kafka.bootstrap, finish)
        waited = s.wait_finished(len(keys), timeout=scale(120, 300))
        deadline = time.monotonic() + 60
        while not _committed_to_end(s.kafka.bootstrap, f"{s.queue}-bridge") and time.monotonic() < deadline:
            time.sleep(0.5)
        committed = _committed_to_end(s.kafka.bootstrap, f"{s.queue}-bridge")
        assert bridge.alive(), bridge.log()[-3000:]
        delivered = dict(
            s.query(
                "SELECT message, count(*) FROM faults_run WHERE message NOT LIKE 'done-%%' GROUP BY message"
            )
        )
        statuses = s.statuses()
        inbox = dict(s.query("SELECT status, count(*) FROM dagger_django_inboxmessage GROUP BY status"))
    lost = sum(1 for n in range(messages) if str(n) not in delivered)
    doubled = sum(1 for count in delivered.values() if count > 1)
    figures = {
        "messages": messages,
        "rate_per_s": STREAM_RATE,
        "listeners": len(keys),
        "bridge_kills": kills,
        "messages_lost": lost,
        "effects_doubled": doubled,
        "workflows_completed": statuses.get("COMPLETED", 0),
        "inbox_by_status": inbox,
        "offsets_committed_to_end": committed,
        "drain_s_after_stream": round(waited, 1),
    }
    figures["workflows_unfinished"] = len(keys) - figures["workflows_completed"]
    defects = broken(figures, "messages_lost", "effects_doubled", "workflows_unfinished")
    if not committed:
        defects.append("offsets not committed to the end")
    write(
        "bridge_kill",
        "SIGKILL the bridge between routing and offset commit",
        figures,
        started=started,
        defects=defects,
    )
    assert lost == 0, figures
    assert doubled == 0, figures
    assert statuses.get("COMPLETED", 0) == len(keys), figures
    assert committed, figures


def wait_subscriptions(s: Stack, expected: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while s.query("SELECT count(*) FROM dagger_django_subscription")[0][0] < expected:
        assert time.monotonic() < deadline, "the listeners did not all start waiting"
        time.sleep(0.2)


def _send(bootstrap: str, messages: dict[str, list[dict[str, object]]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for topic, values in messages.items():
        for value in values:
            producer.produce(topic, value=json.dumps(value).encode(), key=str(value["order_id"]))
            producer.poll(0)
    producer.flush(30)


def test_timers_fire_once_when_beat_is_killed_or_doubled(tmp_path: Path) -> None:
    started = time.monotonic()
    with stack(tmp_path / "stack") as s:
        s.start_worker()
        beat = s.start_beat("beat-0")
        out = tmp_path / "created.jsonl"
        window_start = time.time()
        driver = s.start_driver(
            "--templates", "FaultsTimer", "--count", str(TIMERS), "--out", str(out), "--max-inflight", "100000",
            "--timer-min", "3", "--timer-max", str(3 + TIMER_WINDOW),
        )  # fmt: skip
        assert driver.proc.wait(timeout=120) == 0, driver.log()[-3000:]
        created = driver_records(out)
        # Kills spread over the first half of the window, each beat down for 2 s; then two beats
        # at once over the second half.
        kills = 0
        for i in range(BEAT_KILLS):
            _sleep_until(window_start + 3 + (i + 0.5) * TIMER_WINDOW / 2 / BEAT_KILLS)
            beat.kill()
            kills += 1
            time.sleep(2)
            beat = s.start_beat(f"beat-{i + 1}", wait=False)
        _sleep_until(window_start + 3 + TIMER_WINDOW / 2)
        second = s.start_beat("beat-second")  # returns once it has sent a sweep of its own
        both_since = time.time()
        _sleep_until(max(window_start + 3 + TIMER_WINDOW + 2, both_since + 5))
        two_beats_s = round(time.time() - both_since, 1)
        second.stop()
        waited = s.wait_finished(len(created), timeout=scale(60, 180))
        fired = s.query(
            "SELECT n.workflow_id::text, count(*), min(r.started_at) FROM faults_run r"
            f" JOIN {NODE_ROWS} n ON n.id::text = r.node_id WHERE r.task = 'due' GROUP BY n.workflow_id"
        )
        statuses = s.statuses()
        both_swept = "Sending due task dagger_django: timer sweep" in second.log() and beat.alive()
    run_at = {r["id"]: float(r["run_at"]) for r in created}
    late = sorted(first - run_at[wid] for wid, _count, first in fired if wid in run_at)
    figures = {
        "timers": len(created),
        "window_s": TIMER_WINDOW,
        "beat_kills": kills,
        "two_beats_s": two_beats_s,
        "second_beat_swept": both_swept,
        "timers_fired_twice": sum(1 for _wid, count, _first in fired if count > 1),
        "timers_missed": len(created) - len(fired),
        "workflows_completed": statuses.get("COMPLETED", 0),
        "late_s_median": round(statistics.median(late), 2) if late else None,
        "late_s_max": round(max(late), 2) if late else None,
        "drain_s_after_window": round(waited, 1),
    }
    defects = broken(figures, "timers_fired_twice", "timers_missed")
    write("beat_kill", "Kill beat; run two beats at once", figures, started=started, defects=defects)
    assert both_swept, "the second beat never sent a sweep: the campaign did not test two beats"
    assert figures["timers_fired_twice"] == 0, figures
    assert figures["timers_missed"] == 0, figures
    assert statuses.get("COMPLETED", 0) == len(created), figures


def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)
