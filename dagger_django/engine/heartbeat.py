"""The lease heartbeat: while a worker runs a node's user code, the node's lease stays fresh.

Recovery hands out an EXECUTING node whose ``updated_at`` is older than ``LEASE_SECONDS``
(engine/recovery.py), and a redelivered Celery message re-claims a node of its own lease only
when the heartbeat has stopped (``services._claim``). So a task that runs for an hour is not
handed out again while it runs, and a dead worker's task is still recovered. A listener's
``on_message`` keeps its delivery's lease fresh the same way: the message sweep hands out a CLAIMED
delivery again only when its ``updated_at`` is older than ``DELIVERY_LEASE_SECONDS``
(``messages.deliveries_redispatch``).

One daemon thread per worker process beats for every node and delivery this process is running:
every ``HEARTBEAT_SECONDS`` it moves ``updated_at`` of each of them, guarded by status and lease (a
node stopped or a delivery taken over meanwhile is left alone): a delivery with one ``UPDATE`` of
its row, a node (stored in its workflow's row) in a short transaction that locks the workflow,
one workflow at a time.
The thread has its own database connection and starts on first use in each process (a prefork
child starts its own). Registering a node costs a dictionary entry; a hook that ends before the
first beat costs no query at all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections, router, transaction

from ..conf import dagger_settings
from ..models import Delivery, DeliveryStatus, Status, Workflow
from . import ports
from .state import WorkflowState, load_locked

logger = logging.getLogger("dagger_django.engine")

#: Shortest beat, whatever the settings say: a beat is a database write.
MIN_INTERVAL = 0.05


def interval() -> float:
    """Seconds between beats (``HEARTBEAT_SECONDS``)."""
    return max(MIN_INTERVAL, float(dagger_settings.HEARTBEAT_SECONDS))


def stale_after() -> float:
    """A lease not refreshed for this long has lost its worker, as far as a redelivered message of
    the same lease can tell: three beats missed."""
    return 3 * interval()


#: What a beat refreshes: a node (its hook runs) or a delivery (its listener's on_message runs).
NODE = "node"
DELIVERY = "delivery"
Target = tuple[str, object, str]  # (NODE or DELIVERY, (workflow id, node id) or delivery id, lease)


class _Beater:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[Target, int] = {}
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def add(self, key: Target) -> None:
        with self.lock:
            self.running[key] = self.running.get(key, 0) + 1
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                # First use in this process (a forked child inherits the parent's object but
                # not its thread).
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._loop, name="dagger-heartbeat", daemon=True)
                self.thread.start()

    def remove(self, key: Target) -> None:
        with self.lock:
            left = self.running.get(key, 0) - 1
            if left > 0:
                self.running[key] = left
            else:
                self.running.pop(key, None)

    def _loop(self) -> None:
        last = time.monotonic()
        while True:
            # Short waits, so that a changed HEARTBEAT_SECONDS (tests) applies at once.
            self.wake.wait(min(interval(), 0.5))
            self.wake.clear()
            if time.monotonic() - last < interval():
                continue
            last = time.monotonic()
            with self.lock:
                targets = list(self.running)
            conn = connections[router.db_for_write(Workflow)]
            if not targets:
                # Idle: hold no connection (a process that runs only short tasks never opens one).
                if conn.connection is not None:
                    conn.close()
                continue
            try:
                self.beat(targets)
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                logger.warning("lease heartbeat failed", exc_info=True)
                conn.close()

    def beat(self, targets: list[Target]) -> int:
        """Refresh the leases of ``targets``; returns how many rows were still ours."""
        now = ports.now()
        refreshed = 0
        for kind, key, lease in targets:
            # One short statement or transaction each: no two rows are ever locked together, so
            # a beat cannot deadlock with a transition or a sweep that writes the same rows.
            if kind == DELIVERY:
                rows = Delivery.objects.filter(pk=key, status=DeliveryStatus.CLAIMED, lease=lease)
                refreshed += rows.update(updated_at=now)
            else:
                workflow_id, node_id = key  # type: ignore[misc]
                refreshed += _node_beat(workflow_id, node_id, lease)
        return refreshed


def _node_beat(workflow_id: object, node_id: uuid.UUID, lease: str) -> int:
    """Move the lease clock of a node still EXECUTING under ``lease``: 1, or 0 when it is not."""
    with transaction.atomic():
        wf, nodes = load_locked(workflow_id)
        node = next((n for n in nodes if n.id == node_id), None)
        if wf is None or node is None or node.status != Status.EXECUTING or node.lease != lease:
            return 0
        state = WorkflowState(wf, nodes)
        state.touch(node)
        state.flush()
        return 1


_beater = _Beater()


@contextmanager
def beating(node_id: uuid.UUID, lease: str, *, workflow_id: object) -> Iterator[None]:
    """Keep the lease of ``node_id`` of ``workflow_id`` (held as ``lease``) fresh while the
    block runs."""
    with _beating((NODE, (workflow_id, node_id), lease)):
        yield


@contextmanager
def beating_delivery(delivery_id: int, lease: str) -> Iterator[None]:
    """Keep the claim of delivery ``delivery_id`` (held as ``lease``) fresh while its listener's
    ``on_message`` runs."""
    with _beating((DELIVERY, delivery_id, lease)):
        yield


@contextmanager
def _beating(key: Target) -> Iterator[None]:
    _beater.add(key)
    try:
        yield
    finally:
        _beater.remove(key)


def beat_now() -> int:
    """One beat for every node and delivery this process runs, in the caller's thread (tests, diagnostics)."""
    with _beater.lock:
        targets = list(_beater.running)
    return _beater.beat(targets) if targets else 0


__all__ = ["beat_now", "beating", "beating_delivery", "interval", "stale_after"]
