"""An in-memory dispatcher for engine tests: records work and runs it on demand, in-process.

It is the engine's real code end to end, minus the broker: ``drain()`` calls the same services
the Celery tasks call. Integration tests use the real Celery worker instead.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class InMemoryDispatcher:
    runs: deque[tuple[str, str, str]] = field(default_factory=deque)
    timers: list[tuple[int, dt.datetime]] = field(default_factory=list)
    #: Timer sweeps asked for, with their due time (engine: ``timers.timers_dispatch_upcoming``).
    sweeps: list[dt.datetime] = field(default_factory=list)
    stop_hooks: deque[tuple[str, list[str]]] = field(default_factory=deque)
    sent: list[tuple[str, Any]] = field(default_factory=list)
    #: Run queued nodes of different workflows together (``services.nodes_run``), as a worker
    #: does with a ``run_nodes`` message, instead of one by one.
    batch: bool = False
    #: ... at most this many at a time (``DISPATCH_BATCH`` on a real worker).
    batch_size: int = 20
    #: Set by :meth:`lose_messages`, cleared by :meth:`messages_marked`.
    lost: bool = False

    def lose_messages(self) -> None:
        """What a broker that restarts empty does: every message not yet run is gone."""
        self.runs.clear()
        self.timers.clear()
        self.sweeps.clear()
        self.stop_hooks.clear()
        self.lost = True

    def messages_lost(self) -> bool:
        """Whether messages were lost (:meth:`lose_messages`) since :meth:`messages_marked`."""
        return self.lost

    def messages_marked(self) -> None:
        self.lost = False

    def run_node(self, *, workflow_id: uuid.UUID, node_id: uuid.UUID) -> None:
        lease = uuid.uuid4().hex
        self.runs.append((str(workflow_id), str(node_id), lease))
        self.sent.append(("run_node", str(node_id)))

    def run_nodes(self, *, targets: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        for workflow_id, node_id in targets:
            self.run_node(workflow_id=workflow_id, node_id=node_id)

    def _take_batch(self) -> list[tuple[str, str, str]]:
        """The queued runs of distinct workflows, in order (the others stay queued)."""
        taken: list[tuple[str, str, str]] = []
        kept: deque[tuple[str, str, str]] = deque()
        workflows: set[str] = set()
        while self.runs:
            run = self.runs.popleft()
            (kept if run[0] in workflows or len(taken) >= self.batch_size else taken).append(run)
            workflows.add(run[0])
        self.runs = kept
        return taken

    def fire_timer(self, *, timer_id: int, eta: dt.datetime) -> None:
        self.timers.append((timer_id, eta))
        self.sent.append(("fire_timer", timer_id))

    def sweep_timers(self, *, eta: dt.datetime, count: int = 1) -> None:
        self.sweeps.extend([eta] * count)
        self.sent.append(("sweep_timers", count))

    def run_stop_hooks(self, *, workflow_id: uuid.UUID, node_ids: list[uuid.UUID]) -> None:
        self.stop_hooks.append((str(workflow_id), [str(i) for i in node_ids]))
        self.sent.append(("run_stop_hooks", [str(i) for i in node_ids]))

    def drain(self, *, max_rounds: int = 1000, fire_due_timers: bool = True) -> int:
        """Run queued work (and timers already due by the engine's clock) until nothing is left."""
        from ..engine import ports, services, timers

        done = 0
        for _ in range(max_rounds):
            if self.batch and len(self.runs) > 1:
                taken = self._take_batch()
                services.nodes_run(targets=[(wf, node) for wf, node, _ in taken], lease=taken[0][2])
            elif self.runs:
                wf, node, lease = self.runs.popleft()
                services.node_run(workflow_id=wf, node_id=node, lease=lease)
            elif self.stop_hooks:
                wf, nodes = self.stop_hooks.popleft()
                services.stop_hooks_run(workflow_id=wf, node_ids=nodes)
            elif fire_due_timers and any(eta <= ports.now() for _, eta in self.timers):
                due = [t for t in self.timers if t[1] <= ports.now()]
                self.timers = [t for t in self.timers if t[1] > ports.now()]
                for timer_id, _ in due:
                    timers.timer_fire(timer_id=timer_id)
            elif fire_due_timers and any(eta <= ports.now() for eta in self.sweeps):
                self.sweeps = [eta for eta in self.sweeps if eta > ports.now()]
                timers.timers_fire_due()
            else:
                return done
            done += 1
        raise RuntimeError("InMemoryDispatcher.drain: work keeps coming (a loop?)")
