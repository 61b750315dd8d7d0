"""The state-machine campaign: random workflows, random interleavings, invariants after every step.

Hypothesis's stateful testing drives the real engine on the real PostgreSQL test database with
the in-memory dispatcher and a frozen clock (``dagger_django.testing.engine_under_test``). Each
example creates a few workflows of random shapes (:mod:`tests.faults.shapes`: processes, parallel
groups JOIN_ALL and ATLEAST_ONE of tasks and of processes, decisions, listeners, triggers, intervals, retried executors,
process deadlines, failure policies) and interleaves, in any order hypothesis chooses:

- running a dispatched node (its user code completing, failing or raising), redelivering a
  Celery message already handled (same lease or a new one), losing one;
- routing correlated messages: matching, early (the listener has not started), not completing,
  raising, duplicated, and addressed with a key the workflow no longer has;
- advancing the clock, firing due timers by sweep or by countdown message;
- stop, retry, resume, an operator's skip or complete of any task, runtime-parameter edits that
  re-key the listeners, stop hooks, recovery sweeps;
- settling: running everything left until nothing moves, then checking no workflow is stuck.

After every step the invariants are checked against the database (see :meth:`check`); a
failing example shrinks to the shortest rule sequence that breaks one, printed by hypothesis
as the calls of ``state.<rule>(...)``. Sizes come from :mod:`tests.faults.scale`: a short run in
``make test``, the full one with ``DAGGER_FAULTS=full``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.apps import apps
from django.db import connection
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dagger_django import Dagger
from dagger_django.conf import dagger_settings
from dagger_django.engine import correlation, messages, operations, outbox, recovery, services
from dagger_django.engine.selectors import Event, workflow_events
from dagger_django.engine.state import NODE_TRANSITIONS, WORKFLOW_TRANSITIONS
from dagger_django.engine.timers import timer_fire, timers_fire_due
from dagger_django.exceptions import TaskInvalidState
from dagger_django.models import (
    Node,
    NodeKind,
    Status,
    Subscription,
    Timer,
    TimerStatus,
    Workflow,
)
from dagger_django.models.status import TERMINAL
from dagger_django.testing import engine_under_test
from tests.helpers import stored_nodes

from . import record
from . import shapes as sh
from .scale import full, scale

S = Status
#: A workflow in one of these has ended for good (FAILURE can still be retried or stopped).
FINAL = frozenset({S.COMPLETED, S.STOPPED, S.SKIPPED})
#: ... and of those, the ones whose runtime parameters no longer change (a STOPPED one's may be
#: fixed before it is resumed).
ENDED = FINAL - {S.STOPPED}
ACTIVE = frozenset({S.SUBMITTED, S.EXECUTING})

EXAMPLES = scale(20, 100)
STEPS = scale(25, 50)
MAX_WORKFLOWS = scale(3, 5)

#: Figures of the run, printed at the end (and what the report and docs/reliability.md quote).
FIGURES: Counter[str] = Counter()


# -- shapes -----------------------------------------------------------------------------------------
leaves = st.sampled_from(sh.LEAVES)
groups = st.builds(
    sh.Group,
    operator=st.sampled_from(["JOIN_ALL", "ATLEAST_ONE"]),
    branches=st.lists(leaves, min_size=2, max_size=3).map(tuple),
)
processes = st.builds(
    sh.Process,
    steps=st.lists(st.one_of(leaves, groups), min_size=1, max_size=3).map(tuple),
    decision=st.one_of(st.just(()), st.lists(leaves, min_size=2, max_size=2).map(tuple)),
    deadline=st.sampled_from([0, 0, 0, 90, 700]),
)
process_groups = st.builds(
    sh.ProcessGroup,
    operator=st.sampled_from(["JOIN_ALL", "ATLEAST_ONE"]),
    processes=st.lists(processes, min_size=2, max_size=3).map(tuple),
)
workflow_shapes = st.builds(
    sh.Shape,
    processes=st.lists(st.one_of(processes, processes, process_groups), min_size=1, max_size=3).map(tuple),
    policy=st.sampled_from(["halt", "continue"]),
)


class Violation(AssertionError):
    """An invariant does not hold."""


class WorkflowCampaign(RuleBasedStateMachine):
    """One example: a few workflows and a random interleaving of everything that moves them."""

    workflows = Bundle("workflows")

    def __init__(self) -> None:
        super().__init__()
        self._engine = engine_under_test()
        self.dispatcher, self.clock = self._engine.__enter__()
        self.token = uuid.uuid4().hex[:8]
        self.ids: list[uuid.UUID] = []
        #: Every key value a workflow has had, oldest first (the last is its current one).
        self.keys: dict[uuid.UUID, list[str]] = {}
        #: Celery messages already handled once: (workflow id, node id, lease).
        self.handled: list[tuple[str, str, str]] = []
        #: Claimed nodes whose user code has not returned yet: (work, lease).
        self.inflight: list[tuple[Any, str]] = []
        #: Messages routed so far: (message id, payload).
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.history = History()
        #: Workflows a stop or retry of this step may legitimately move out of FAILURE.
        self.operated: set[uuid.UUID] = set()
        self.counter = 0
        sh.CONTROL.mode, sh.CONTROL.branch, sh.CONTROL.ready = "ok", 0, False
        FIGURES["examples"] += 1

    def teardown(self) -> None:
        for status in Workflow.objects.filter(pk__in=self.ids).values_list("status", flat=True):
            FIGURES[f"ended:{status}"] += 1
        self._engine.__exit__(None, None, None)
        _empty_tables()

    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{self.token}-{prefix}{self.counter}"

    def _step(self, name: str) -> None:
        FIGURES["steps"] += 1
        FIGURES[f"rule:{name}"] += 1

    # -- workflows ----------------------------------------------------------------------------------
    @initialize(target=workflows, shape=workflow_shapes, trigger_in=st.sampled_from([0, 30, 600]))
    def first(self, shape: sh.Shape, trigger_in: int) -> uuid.UUID:
        return self.create(shape, trigger_in)

    @precondition(lambda self: len(self.ids) < MAX_WORKFLOWS)
    @rule(target=workflows, shape=workflow_shapes, trigger_in=st.sampled_from([0, 30, 600]))
    def create(self, shape: sh.Shape, trigger_in: int) -> uuid.UUID:
        self._step("create")
        key = self._next("k")
        now = self.clock.now().timestamp()
        wf = services.workflow_create(
            template=sh.build(shape),
            runtime_parameters={
                sh.KEY: key,
                sh.RUN_AT: now + trigger_in,
                sh.DEADLINE: now + 900,
                sh.PERIOD: 20,
            },
            submit=True,
        )
        self.ids.append(wf.id)
        self.keys[wf.id] = [key]
        FIGURES["workflows"] += 1
        return wf.id

    # -- Celery messages -----------------------------------------------------------------------------
    @precondition(lambda self: bool(self.dispatcher.runs))
    @rule(
        pick=st.integers(0, 7),
        mode=st.sampled_from(sh.MODES),
        branch=st.sampled_from([0, 1, None]),
        ready=st.booleans(),
    )
    def run(self, pick: int, mode: str, branch: int | None, ready: bool) -> None:
        """A worker takes one of the queued messages (not necessarily the oldest)."""
        self._step("run")
        runs = self.dispatcher.runs
        message = runs[pick % len(runs)]
        runs.remove(message)
        sh.CONTROL.mode, sh.CONTROL.branch, sh.CONTROL.ready = mode, branch, ready
        try:
            self._node_run(message[0], message[1], message[2])
        finally:
            sh.CONTROL.mode = "ok"
        self.handled.append(message)

    def _node_run(self, wf: Any, node: Any, lease: str, *, requeue: bool = True) -> bool:
        """``run_node`` as the Celery task does it: a message whose node is still running under its
        lease (``LeaseHeld``: fresh heartbeat) runs nothing and is sent again later (a retry,
        put back in the queue unless ``requeue`` is false). False when it was held."""
        try:
            services.node_run(workflow_id=wf, node_id=node, lease=lease)
        except services.LeaseHeld:
            FIGURES["lease_held"] += 1
            if requeue:
                self.dispatcher.runs.append((str(wf), str(node), lease))
            return False
        return True

    @precondition(lambda self: bool(self.dispatcher.runs) and len(self.inflight) < 3)
    @rule(pick=st.integers(0, 7))
    def claim(self, pick: int) -> None:
        """A worker claims a queued node and starts its user code, which is still running when the
        next steps happen (a stop, a deadline, a recovery, a redelivery...)."""
        self._step("claim")
        runs = self.dispatcher.runs
        message = runs[pick % len(runs)]
        runs.remove(message)
        self.handled.append(message)
        try:
            work = services._claim(uuid.UUID(message[0]), uuid.UUID(message[1]), message[2])
        except services.LeaseHeld:
            # A redelivered message whose node still runs under this lease (the heartbeat is
            # fresh): as the Celery task does, it comes back later.
            FIGURES["lease_held"] += 1
            runs.append(message)
            return
        if work is not None:
            self.inflight.append((work, message[2]))

    @precondition(lambda self: bool(self.inflight))
    @rule(
        pick=st.integers(0, 7),
        mode=st.sampled_from(sh.MODES),
        branch=st.sampled_from([0, 1, None]),
        ready=st.booleans(),
    )
    def finish(self, pick: int, mode: str, branch: int | None, ready: bool) -> None:
        """The user code of a claimed node returns; its result is applied (and, as a worker does,
        the workflow's next step is claimed inline and stays in flight)."""
        self._step("finish")
        work, lease = self.inflight.pop(pick % len(self.inflight))
        sh.CONTROL.mode, sh.CONTROL.branch, sh.CONTROL.ready = mode, branch, ready
        try:
            with outbox.collecting() as sends:
                outcome = services._execute(work)
            outcome.sends = sends
        finally:
            sh.CONTROL.mode = "ok"
        following = services._apply(work, outcome, lease=lease, claim_next=True)
        if following is not None:
            self.inflight.append((following, lease))

    @precondition(lambda self: bool(self.handled))
    @rule(pick=st.integers(0, 7), same_lease=st.booleans(), mode=st.sampled_from(sh.MODES))
    def redeliver(self, pick: int, same_lease: bool, mode: str) -> None:
        """A message already handled comes again: the broker redelivered it (same lease) or a
        second message for the same node was sent (a new lease)."""
        self._step("redeliver")
        wf, node, lease = self.handled[pick % len(self.handled)]
        sh.CONTROL.mode = mode
        try:
            self._node_run(wf, node, lease if same_lease else uuid.uuid4().hex)
        finally:
            sh.CONTROL.mode = "ok"

    @precondition(lambda self: bool(self.dispatcher.runs))
    @rule(pick=st.integers(0, 7))
    def lose(self, pick: int) -> None:
        """The broker loses a message: only recovery can hand the node out again."""
        self._step("lose")
        runs = self.dispatcher.runs
        runs.remove(runs[pick % len(runs)])

    @precondition(lambda self: bool(self.dispatcher.stop_hooks))
    @rule()
    def stop_hooks(self) -> None:
        self._step("stop_hooks")
        wf, nodes = self.dispatcher.stop_hooks.popleft()
        services.stop_hooks_run(workflow_id=wf, node_ids=nodes)

    # -- messages -------------------------------------------------------------------------------------
    @rule(wf=workflows, variant=st.sampled_from(["match", "match", "not_done", "raise", "stale_key"]))
    def route(self, wf: uuid.UUID, variant: str) -> None:
        """A correlated message arrives for ``wf`` (its listeners may not have started yet)."""
        self._step("route")
        history = self.keys[wf]
        if variant == "stale_key":
            if len(history) < 2:
                return
            key = history[0]
        else:
            key = history[-1]
        payload: dict[str, Any] = {sh.KEY: key, "done": variant != "not_done", "raise": variant == "raise"}
        message_id = self._next("m")
        (routed,) = messages.messages_route(
            [messages.Incoming(topic=sh.TOPIC, payload=payload, source="campaign", message_id=message_id)]
        )
        self.sent.append((message_id, payload))
        FIGURES["messages"] += 1
        if variant == "stale_key":
            # The workflow was re-keyed away from this value: nothing may still wait on it.
            _check(routed.matched == 0, f"a message for the old key {key!r} matched {routed}", "rekey")

    @precondition(lambda self: bool(self.sent))
    @rule(pick=st.integers(0, 7))
    def duplicate(self, pick: int) -> None:
        """A message routed before arrives again (same message id): no second effect."""
        self._step("duplicate")
        message_id, payload = self.sent[pick % len(self.sent)]
        before = len(self.dispatcher.runs)
        (routed,) = messages.messages_route(
            [messages.Incoming(topic=sh.TOPIC, payload=payload, source="campaign", message_id=message_id)]
        )
        FIGURES["messages"] += 1
        _check(routed.status == messages.DUPLICATE, f"a repeated message was {routed}", "dedupe")
        _check(len(self.dispatcher.runs) == before, "a duplicate message was dispatched", "dedupe")

    @rule(wf=workflows)
    def rekey(self, wf: uuid.UUID) -> None:
        """The correlation parameter changes through the API: listeners are re-keyed."""
        self._step("rekey")
        status = Workflow.objects.get(pk=wf).status
        key = self._next("k")
        try:
            services.workflow_update_parameters(workflow_id=wf, changes={sh.KEY: key})
        except TaskInvalidState:
            _check(status in ENDED, f"a {status} workflow refused a parameter edit", "operations")
            return
        _check(status not in ENDED, f"a {status} workflow accepted a parameter edit", "operations")
        self.keys[wf].append(key)

    # -- time ---------------------------------------------------------------------------------------------
    @rule(seconds=st.sampled_from([1, 5, 20, 60, 120, 600]))
    def advance_clock(self, seconds: int) -> None:
        self._step("advance_clock")
        self.clock.advance(seconds=seconds)

    @rule(by_sweep=st.booleans())
    def fire_timers(self, by_sweep: bool) -> None:
        """Due timers fire: through beat's sweep, or through their own countdown messages."""
        self._step("fire_timers")
        if by_sweep:
            FIGURES["timers_fired"] += timers_fire_due()
            return
        now = self.clock.now()
        due = [t for t in self.dispatcher.timers if t[1] <= now]
        self.dispatcher.timers = [t for t in self.dispatcher.timers if t[1] > now]
        for timer_id, _ in due:
            FIGURES["timers_fired"] += int(timer_fire(timer_id=timer_id))

    @rule()
    def recover(self) -> None:
        """A lease passes and the recovery sweeps run (nodes and listener deliveries)."""
        self._step("recover")
        self.clock.advance(seconds=float(dagger_settings.LEASE_SECONDS) + 1)
        FIGURES["recovered"] += recovery.nodes_recover()
        messages.deliveries_redispatch()
        messages.deliveries_expire()

    # -- operators ----------------------------------------------------------------------------------------
    @rule(wf=workflows)
    def stop(self, wf: uuid.UUID) -> None:
        self._step("stop")
        status = Workflow.objects.get(pk=wf).status
        self.operated.add(wf)
        try:
            services.workflow_stop(workflow_id=wf)
        except TaskInvalidState:
            _check(status in FINAL, f"a {status} workflow refused to stop", "operations")
            return
        _check(status not in FINAL, f"a {status} workflow was stopped", "operations")

    @rule(wf=workflows)
    def retry(self, wf: uuid.UUID) -> None:
        self._step("retry")
        status = Workflow.objects.get(pk=wf).status
        self.operated.add(wf)
        try:
            services.workflow_retry(workflow_id=wf)
        except TaskInvalidState as exc:
            # A FAILURE workflow that cannot be retried is stuck for good.
            _check(status != S.FAILURE, f"a FAILURE workflow refused a retry: {exc}", "operations")
            return
        _check(status == S.FAILURE, f"a {status} workflow was retried", "operations")

    @rule(wf=workflows, hooks_first=st.booleans())
    def resume(self, wf: uuid.UUID, hooks_first: bool) -> None:
        """An operator resumes a workflow (``hooks_first``: once the stop hooks owed have run)."""
        self._step("resume")
        while hooks_first and self.dispatcher.stop_hooks:
            owner, nodes = self.dispatcher.stop_hooks.popleft()
            services.stop_hooks_run(workflow_id=owner, node_ids=nodes)
        status = Workflow.objects.get(pk=wf).status
        self.operated.add(wf)
        try:
            operations.workflow_resume(workflow_id=wf)
        except TaskInvalidState as exc:
            _check(
                status != S.STOPPED or "stop hooks" in str(exc) or "was stopped while" in str(exc),
                f"a STOPPED workflow refused to resume: {exc}",
                "operations",
            )
            return
        _check(status == S.STOPPED, f"a {status} workflow was resumed", "operations")
        FIGURES["resumed"] += 1

    @rule(wf=workflows, pick=st.integers(0, 40), complete=st.booleans(), waiting_only=st.booleans())
    def skip_or_complete(self, wf: uuid.UUID, pick: int, complete: bool, waiting_only: bool) -> None:
        """An operator skips or completes a task (``waiting_only``: one that waits or failed, if
        any): accepted only for a waiting or failed one."""
        self._step("complete" if complete else "skip")
        nodes = sorted(stored_nodes.filter(workflow_id=wf, node_type="LEAF"), key=lambda n: n.position)
        if waiting_only:
            timed = set(
                Timer.objects.filter(workflow_id=wf, status=TimerStatus.PENDING).values_list(
                    "node_id", flat=True
                )
            )
            waiting = [
                n
                for n in nodes
                if n.status == S.FAILURE
                or (n.kind == NodeKind.LISTENER and n.status == S.EXECUTING)
                or (n.id in timed and n.status in ACTIVE)
            ]
            nodes = waiting or nodes
        if not nodes:
            return
        node = nodes[pick % len(nodes)]
        self.operated.add(wf)
        operation = operations.node_complete if complete else operations.node_skip
        try:
            operation(workflow_id=wf, node_id=node.id)
        except TaskInvalidState:
            return
        FIGURES["skipped" if not complete else "completed"] += 1
        after = stored_nodes.get(pk=node.id).status
        _check(
            after in (S.COMPLETED, S.SKIPPED) and node.status not in FINAL,
            f"{node.name} went {node.status} -> {after} by an operator",
            "operations",
        )

    # -- settling --------------------------------------------------------------------------------------
    @rule()
    def settle(self) -> None:
        """Everything succeeds from now on: run all work until nothing moves. Afterwards every
        workflow has ended or waits on a listener; none waits for work nobody will do."""
        self._step("settle")
        sh.CONTROL.mode, sh.CONTROL.branch, sh.CONTROL.ready = "ok", 0, True
        while self.inflight:
            work, lease = self.inflight.pop(0)
            outcome = services._execute(work)
            following = services._apply(work, outcome, lease=lease, claim_next=True)
            if following is not None:
                self.inflight.append((following, lease))
        for _ in range(40):
            moved = 0
            held = []  # retried after the clock moves on (their heartbeat goes stale)
            while self.dispatcher.runs:
                wf, node, lease = self.dispatcher.runs.popleft()
                if self._node_run(wf, node, lease, requeue=False):
                    self.handled.append((wf, node, lease))
                    moved += 1
                else:
                    held.append((wf, node, lease))
            self.dispatcher.runs.extend(held)
            while self.dispatcher.stop_hooks:
                wf, nodes = self.dispatcher.stop_hooks.popleft()
                services.stop_hooks_run(workflow_id=wf, node_ids=nodes)
            self.dispatcher.timers.clear()  # the sweep below fires them all
            self.clock.advance(seconds=float(dagger_settings.LEASE_SECONDS) + 1)
            moved += timers_fire_due()
            moved += recovery.nodes_recover()
            moved += messages.deliveries_redispatch()
            waiting_on_time = Timer.objects.filter(workflow_id__in=self.ids, status=TimerStatus.PENDING)
            if not moved and not self.dispatcher.runs and not waiting_on_time.exists():
                break
        sh.CONTROL.ready = False
        nodes = _by_workflow(stored_nodes.filter(workflow_id__in=self.ids))
        for wf in Workflow.objects.filter(pk__in=self.ids):
            mine = nodes[wf.id]
            busy = [n.name for n in mine if n.status == S.SUBMITTED]
            _check(not busy, f"workflow {wf.status} keeps SUBMITTED nodes nobody runs: {busy}", "liveness")
            if wf.status in TERMINAL:
                continue
            waiting = [n for n in mine if n.kind == NodeKind.LISTENER and n.status == S.EXECUTING]
            _check(
                bool(waiting),
                f"workflow {wf.status} is stuck: nothing left to run and no listener waiting "
                f"({_statuses(mine)})",
                "liveness",
            )

    # -- invariants ----------------------------------------------------------------------------------------
    @invariant()
    def database_agrees(self) -> None:
        """Every invariant of the engine, read back from the database."""
        if not self.ids:
            return
        check(self.ids, history=self.history, operated=self.operated)
        self.operated = set()


# ==================================================================================================
# the invariants
# ==================================================================================================
def _check(ok: bool, message: str, name: str) -> None:
    FIGURES[f"checks:{name}"] += 1
    FIGURES["checks"] += 1
    if not ok:
        raise Violation(f"[{name}] {message}")


def _by_workflow(rows: Any) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = defaultdict(list)
    for row in rows:
        out[row["workflow_id"] if isinstance(row, dict) else row.workflow_id].append(row)
    return out


def _statuses(nodes: list[Node]) -> str:
    return ", ".join(
        f"{n.name.rsplit('.', 1)[-1]}={n.status}" for n in sorted(nodes, key=lambda n: n.position)
    )


@dataclass
class History:
    """How far the history of an example's workflows has been checked: each step reads only
    the events written since the previous one and carries the statuses they lead to."""

    #: {workflow id: how many of its events were checked}
    read: dict[uuid.UUID, int] = field(default_factory=dict)
    #: {workflow id: {node id, or None for the workflow: status its history ends at}}
    current: dict[uuid.UUID, dict[Any, str]] = field(default_factory=lambda: defaultdict(dict))
    #: Workflow statuses seen after the previous step.
    seen: dict[uuid.UUID, str] = field(default_factory=dict)


def check(ids: list[uuid.UUID], *, history: History, operated: set[uuid.UUID]) -> None:
    """Check the invariants of the workflows ``ids``; ``operated``: the workflows a stop or
    retry touched in this step."""
    workflows = {wf.id: wf for wf in Workflow.objects.filter(pk__in=ids)}
    nodes = _by_workflow(stored_nodes.filter(workflow_id__in=ids))
    events: dict[uuid.UUID, list[Event]] = {}
    for wid in ids:
        everything = workflow_events(workflow_id=wid)
        events[wid] = everything[history.read.get(wid, 0) :]
        history.read[wid] = len(everything)
    subscriptions = list(
        Subscription.objects.filter(workflow_id__in=ids).values(
            "workflow_id", "node_id", "topic", "key_name", "key_value"
        )
    )
    timers = list(
        Timer.objects.filter(workflow_id__in=ids, status=TimerStatus.PENDING).values(
            "workflow_id", "node_id", "purpose"
        )
    )
    for wid in ids:
        wf = workflows[wid]
        _check_terminal_status(wf, events[wid], history.seen.get(wid), wid in operated)
        _check_nothing_runs_after_the_end(wf, nodes[wid], events[wid], history.current[wid].get(None))
        _check_transitions(wf, nodes[wid], events[wid], history.current[wid])
        history.seen[wid] = wf.status
        _check_joins(wf, nodes[wid])
        _check_containers(nodes[wid])
    _check_subscriptions(workflows, nodes, subscriptions)
    _check_timers(workflows, nodes, timers)


def _check_terminal_status(wf: Workflow, events: list[Event], before: str | None, operated: bool) -> None:
    """One terminal status, for good: COMPLETED/SKIPPED never change, STOPPED only by a resume;
    FAILURE changes only through retry (to EXECUTING), an operator's skip or complete of a
    failed task (to EXECUTING) or stop (to STOPPED)."""
    resumed = any(e.node_id is None and e.reason == "resumed" for e in events)
    if before in FINAL:
        _check(
            wf.status == before or (before == S.STOPPED and operated and resumed),
            f"workflow went {before} -> {wf.status}",
            "terminal_status",
        )
    elif before == S.FAILURE and wf.status != S.FAILURE:
        _check(operated, f"workflow left FAILURE ({wf.status}) with no retry or stop", "terminal_status")
    for e in events:
        if e.node_id is None and e.from_status == S.FAILURE and e.to_status != S.FAILURE:
            _check(
                (e.to_status, e.reason)
                in {
                    (S.EXECUTING, "retried"),
                    (S.STOPPED, "stopped"),
                    (S.EXECUTING, "node_skipped"),
                    (S.EXECUTING, "node_completed"),
                },
                f"workflow left FAILURE for {e.to_status} ({e.reason})",
                "terminal_status",
            )
        if e.node_id is None and e.from_status == S.STOPPED and e.to_status != S.STOPPED:
            _check(
                e.reason == "resumed",
                f"workflow left STOPPED for {e.to_status} ({e.reason})",
                "terminal_status",
            )


def _check_transitions(wf: Workflow, nodes: list[Node], events: list[Event], current: dict[Any, str]) -> None:
    """Every status change is in the transition table, follows the previous one, and the last
    one recorded is the status stored (no change without its history event). ``current``: the
    statuses the events checked before lead to (updated)."""
    for e in events:
        key = e.node_id
        table = WORKFLOW_TRANSITIONS if key is None else NODE_TRANSITIONS
        frm = current.get(key, S.NOT_STARTED)
        _check(
            e.from_status == frm,
            f"{'workflow' if key is None else key}: event from {e.from_status} but it was {frm} ({e.reason})",
            "transitions",
        )
        _check(
            e.to_status == frm or e.to_status in table[frm],
            f"{'workflow' if key is None else key}: {frm} -> {e.to_status} is not allowed ({e.reason})",
            "transitions",
        )
        current[key] = e.to_status
    _check(
        current.get(None, S.NOT_STARTED) == wf.status,
        f"workflow is {wf.status}, its history ends at {current.get(None)}",
        "transitions",
    )
    for n in nodes:
        _check(
            current.get(n.id, S.NOT_STARTED) == n.status,
            f"{n.name} is {n.status}, its history ends at {current.get(n.id, S.NOT_STARTED)}",
            "transitions",
        )


def _check_nothing_runs_after_the_end(
    wf: Workflow, nodes: list[Node], events: list[Event], before: str | None
) -> None:
    """Once a workflow is COMPLETED, STOPPED or SKIPPED no node is claimed, executes or completes.
    While it is FAILURE (halted), work already handed out may finish (docs: failure_policy), but
    nothing that had not started starts. ``before``: the workflow's status before ``events``."""
    names = {n.id: n.name for n in nodes}
    wf_status: str = before or S.NOT_STARTED
    for e in events:
        if e.node_id is None:
            wf_status = e.to_status
            continue
        moved = e.from_status != e.to_status
        runs = (moved and e.to_status in (S.SUBMITTED, S.EXECUTING, S.COMPLETED)) or e.reason == "reclaimed"
        if wf_status in FINAL:
            _check(
                not runs or e.reason == "monitored_task_finished",
                f"{names.get(e.node_id)} went {e.from_status} -> {e.to_status} ({e.reason}) "
                f"after the workflow ended {wf_status}",
                "no_run_after_end",
            )
        elif wf_status == S.FAILURE:
            _check(
                not (runs and e.from_status == S.NOT_STARTED),
                f"{names.get(e.node_id)} started ({e.reason}) while the workflow was halted",
                "no_run_after_end",
            )
    if wf.status in FINAL:
        running = [n.name for n in nodes if n.status in ACTIVE]
        _check(not running, f"workflow {wf.status} with nodes still running: {running}", "no_run_after_end")


def _check_joins(wf: Workflow, nodes: list[Node]) -> None:
    """A parallel group's branch accounting matches its children's statuses."""
    by_id = {str(n.id): n for n in nodes}
    for group in nodes:
        if group.kind != NodeKind.PARALLEL:
            continue
        heads = [by_id[i] for i in group.child_ids if i in by_id]
        branches: dict[str, str] = group.config.get("_branches", {})
        operator = group.config.get("operator", "JOIN_ALL")
        where = f"{group.name} ({operator}, {group.status}, branches {branches}, children {_statuses(heads)})"
        _check(set(branches) <= set(group.child_ids), f"{where}: accounts for unknown branches", "joins")
        for head_id, status in branches.items():
            _check(status in TERMINAL, f"{where}: a branch recorded as {status}", "joins")
            if status == S.COMPLETED:
                _check(by_id[head_id].status == S.COMPLETED, f"{where}: a completed branch is not", "joins")
        done = len(branches) >= len(group.child_ids)
        completed = [h for h, s in branches.items() if s == S.COMPLETED]
        if group.status == S.EXECUTING:
            _check(not done, f"{where}: every branch ended but the group still runs", "joins")
            if operator == "ATLEAST_ONE":
                _check(not completed, f"{where}: a branch completed but the group still runs", "joins")
        if group.status == S.COMPLETED:
            if operator == "JOIN_ALL":
                _check(
                    done and S.FAILURE not in branches.values() and bool(completed),
                    f"{where}: completed before all its branches did",
                    "joins",
                )
                _check(
                    all(h.status in (S.COMPLETED, S.SKIPPED) for h in heads),
                    f"{where}: completed with children that did not",
                    "joins",
                )
            else:
                _check(bool(completed), f"{where}: completed with no completed branch", "joins")
        if group.status in TERMINAL and group.status != S.FAILURE:
            running = [n.name for n in nodes if _under(n, group, by_id) and n.status in ACTIVE]
            _check(not running, f"{where}: ended while {running} still run", "joins")


def _check_containers(nodes: list[Node]) -> None:
    """A node runs only inside running containers: every process and group above a SUBMITTED or
    EXECUTING node is EXECUTING (or FAILURE: a halted workflow lets work already handed out
    finish)."""
    by_id = {str(n.id): n for n in nodes}
    for n in nodes:
        if n.status not in ACTIVE:
            continue
        parent = by_id.get(str(n.parent_id)) if n.parent_id else None
        while parent is not None:
            _check(
                parent.status in (S.EXECUTING, S.FAILURE),
                f"{n.name} is {n.status} inside {parent.name}, which is {parent.status}",
                "containers",
            )
            parent = by_id.get(str(parent.parent_id)) if parent.parent_id else None


def _under(node: Node, container: Node, by_id: dict[str, Node]) -> bool:
    parent = by_id.get(str(node.parent_id)) if node.parent_id else None
    while parent is not None:
        if parent.id == container.id:
            return True
        parent = by_id.get(str(parent.parent_id)) if parent.parent_id else None
    return False


def _check_subscriptions(
    workflows: dict[uuid.UUID, Workflow], nodes: dict[Any, list[Node]], rows: list[dict[str, Any]]
) -> None:
    """Every listener that can still take a message has exactly its subscription, keyed with the
    workflow's current value; nothing else has one. "Can still take a message": EXECUTING
    (waiting), and by design NOT_STARTED (early messages are buffered) and FAILURE (a retry makes
    it wait again), in a workflow that has not ended for good; and a completed listener with
    ``reprocess_on_message``, even after its workflow ended (docs/correlation.md)."""
    by_node = {r["node_id"]: r for r in rows}
    _check(len(by_node) == len(rows), "a node has two subscriptions", "subscriptions")
    for wid, wf in workflows.items():
        for n in nodes[wid]:
            if n.kind != NodeKind.LISTENER:
                _check(n.id not in by_node, f"{n.name} ({n.kind}) has a subscription", "subscriptions")
                continue
            wanted = correlation.keeps_subscription(n) and (
                wf.status not in FINAL or n.status == S.COMPLETED  # reprocess_on_message
            )
            row = by_node.get(n.id)
            if not wanted:
                _check(
                    row is None,
                    f"{n.name} is {n.status} in a {wf.status} workflow but still subscribed",
                    "subscriptions",
                )
                continue
            _check(row is not None, f"{n.name} is {n.status} with no subscription", "subscriptions")
            assert row is not None
            expected = correlation.correlation_value(wf.runtime_parameters.get(sh.KEY))
            _check(
                (row["topic"], row["key_name"], row["key_value"]) == (sh.TOPIC, sh.KEY, expected),
                f"{n.name} subscribed as {row}, the workflow's key is {expected!r}",
                "subscriptions",
            )


def _check_timers(
    workflows: dict[uuid.UUID, Workflow], nodes: dict[Any, list[Node]], rows: list[dict[str, Any]]
) -> None:
    """No timer is pending for a workflow that ended for good, nor for a node that ended."""
    status = {n.id: n for ns in nodes.values() for n in ns}
    for r in rows:
        wf = workflows[r["workflow_id"]]
        node = status.get(r["node_id"])
        _check(
            wf.status not in FINAL,
            f"a {r['purpose']} timer of {node.name if node else r['node_id']} is pending in a {wf.status} workflow",
            "timers",
        )
        _check(
            node is None or node.status not in TERMINAL,
            f"a {r['purpose']} timer is pending for {node.name if node else ''} which is {node.status if node else ''}",
            "timers",
        )


# ==================================================================================================
# database
# ==================================================================================================
def _empty_tables() -> None:
    """Remove what an example wrote (templates stay: the engine caches their rows)."""
    keep = {"dagger_django.workflowtemplate"}
    tables = [
        m._meta.db_table
        for m in apps.get_app_config("dagger_django").get_models()
        if m._meta.label_lower not in keep and not m._meta.proxy and m._meta.managed
    ]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE {} CASCADE".format(", ".join(connection.ops.quote_name(t) for t in tables)))


@pytest.fixture
def anchor() -> Any:
    """Register a template with the campaign's listener, so routing knows its topic."""
    template = sh.anchor()
    saved = dict(Dagger.template_dags)
    Dagger.template_dags[template.name] = template
    yield template
    Dagger.template_dags.clear()
    Dagger.template_dags.update(saved)


@pytest.mark.campaign
def test_random_interleavings_keep_every_workflow_invariant(
    transactional_db: Any, anchor: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    FIGURES.clear()
    started = time.monotonic()
    run_state_machine_as_test(
        WorkflowCampaign,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nstate-machine campaign ({'full' if full() else 'short'}): {_figures(elapsed)}")
        record.write(
            "state_machine",
            "Engine state machine (hypothesis stateful)",
            {
                **{k: FIGURES[k] for k in ("examples", "steps", "workflows", "messages", "checks")},
                "invariants broken": 0,  # run_state_machine_as_test raised otherwise
                "checks by invariant": {
                    k[7:]: v for k, v in sorted(FIGURES.items()) if k.startswith("checks:")
                },
            },
            started=started,
        )


def _figures(elapsed: float) -> str:
    main = [
        "examples",
        "steps",
        "workflows",
        "messages",
        "timers_fired",
        "recovered",
        "resumed",
        "skipped",
        "completed",
        "checks",
    ]
    text = ", ".join(f"{k} {FIGURES[k]}" for k in main)
    per_check = ", ".join(f"{k[7:]} {v}" for k, v in sorted(FIGURES.items()) if k.startswith("checks:"))
    ends = ", ".join(f"{k[6:]} {v}" for k, v in sorted(FIGURES.items()) if k.startswith("ended:"))
    return f"{text}; checks by invariant: {per_check}; workflows at the end: {ends}; {elapsed:.1f} s"
