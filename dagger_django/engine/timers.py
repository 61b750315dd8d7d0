"""Firing timers: the countdown message of one timer, the sweep, and the sweeps scheduled ahead.

A wait on time is a :class:`~dagger_django.models.Timer` row, written by the transition that
starts the wait (``engine/timing.py``: what each wait is, and what firing it does to the
workflow). This module is the clock that fires those rows: :func:`timer_fire` (a timer's Celery
countdown, ``dagger_django.fire_timer``), :func:`timers_fire_due` (the sweep: celery-beat's
``dagger_django.sweep_timers``, ``manage.py dagger_fire_timers``), fired in batches of
``TIMER_BATCH`` per transaction, and :func:`timers_dispatch_upcoming` (precision sweeps scheduled
at the due times of timers too far ahead for a countdown). See ``docs/time.md``.

It is a room of its own rather than a part of ``timing.py`` because it sits on the other side
of the transaction: ``timing`` runs inside a workflow's transition (the walker calls it, and
``txn.commit`` calls ``timing.before_flush``), while this module opens those transactions
through ``engine/txn.py`` and claims timers with its own SQL. In ``timing`` it would make
``timing`` and ``txn`` import each other.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Count

from ..conf import dagger_settings
from ..definitions.views import build_task
from ..models import Status, Timer, TimerStatus, Workflow
from ..models.status import TIMED_KINDS, TIMER_TRANSITIONS, sole_source, transition
from . import logs, ports, recovery, timing
from .state import Reuse, WorkflowState
from .txn import (
    StepRaised,
    Work,
    batch_step,
    batch_write,
    claim_node,
    commit,
    lock,
    lock_many,
)

logger = logging.getLogger("dagger_django.engine")


# -- one timer (its countdown message) ------------------------------------------------------------
def timer_fire(*, timer_id: int) -> bool:
    """Fire one timer if it is still pending; a second firing is a no-op. Returns whether it fired.

    The path of a timer's Celery countdown message (``dagger_django.fire_timer``).
    """
    row = (
        Timer.objects.filter(pk=timer_id)
        .values("workflow_id", "node_id", "purpose", "due_at", "status", "attempt")
        .first()
    )
    if row is None or row["status"] != TimerStatus.PENDING:
        return False
    if row["due_at"] > ports.now():
        # A broker's countdown can run a few milliseconds early: the table decides, so wait on.
        try:
            ports.get_dispatcher().fire_timer(timer_id=timer_id, eta=row["due_at"])
        except Exception as exc:  # noqa: BLE001 - the timer stays PENDING: the sweep fires it
            logger.warning("could not send timer %s again (%r); the sweep fires it", timer_id, exc)
        return False
    with transaction.atomic():
        state = lock(row["workflow_id"])
        if state is None:
            return False
        return timer_fire_locked(
            state,
            timer_id=timer_id,
            node_id=row["node_id"],
            purpose=row["purpose"],
            attempt=row["attempt"],
        )


def timer_fire_locked(
    state: WorkflowState,
    *,
    timer_id: int,
    node_id: Any,
    purpose: str,
    attempt: int | None,
    marked: bool = False,
    lease: str | None = None,
    claimed: list[tuple[Work, str]] | None = None,
    deferred: bool = False,
) -> bool:
    """Inside the workflow's transaction: mark the timer FIRED (compare-and-set; ``marked``: the
    claim did it already) and act on it. False (nothing written) when it was no longer PENDING.

    The one locked path a timer fires through: the countdown message, the sweep and an
    operator's "fire now" (``operations.timer_fire_now``, which fires it before it is due).

    ``lease`` (the sweep's): when firing hands a trigger or an interval task to a worker, the
    node is claimed right here under ``lease`` instead (EXECUTING, as a worker's claim does) and
    its :class:`Work` appended to ``claimed``; the caller runs it after commit. ``deferred``: the
    writes are left to the caller (``txn.commit(deferred=True)``)."""
    if not marked:
        fired = transition(
            Timer.objects.filter(pk=timer_id, status=TimerStatus.PENDING),
            TimerStatus.FIRED,
            fired_at=state.now,
        )
        if not fired:
            return False
    node = state.get(node_id)
    timing.fire(state, node, purpose=purpose, attempt=attempt, timer_id=timer_id)
    work = None
    if lease is not None and node is not None and _claimable(state, node):
        try:
            task = build_task(node, strict=True)
        except Exception:  # noqa: BLE001 - the timer still fires; a worker's claim reports it
            task = None
        if task is not None:
            state.to_dispatch.remove(node.id)
            work = claim_node(state, node, lease, task=task)
    commit(state, deferred=deferred)
    if work is not None and claimed is not None:
        claimed.append((work, lease))  # type: ignore[arg-type]  # lease is a str here
    return True


def _claimable(state: WorkflowState, node: Any) -> bool:
    """Firing handed ``node`` to a worker (it is SUBMITTED and about to be dispatched), and it is
    a trigger or an interval task: the sweep may claim it in the firing transaction."""
    return node.kind in TIMED_KINDS and node.status == Status.SUBMITTED and node.id in state.to_dispatch


# -- the sweep (celery-beat's ``dagger_django.sweep_timers``, ``manage.py dagger_fire_timers``) --------
@dataclass(frozen=True)
class _DueTimer:
    id: int
    workflow_id: uuid.UUID
    node_id: uuid.UUID | None
    purpose: str
    attempt: int | None


def timers_fire_due(*, limit: int | None = None, run: bool | None = None) -> int:
    """One sweep: fire due timers, earliest first, in batches. Returns how many fired.

    At most ``limit`` (default ``MAX_TASKS_PER_TRIGGER``) timers are tried. Each batch is one
    transaction: it claims up to ``TIMER_BATCH`` due timers of different workflows, locking their
    workflows with ``FOR UPDATE SKIP LOCKED`` (a timer whose workflow another sweep or transaction
    holds right now is passed over, so concurrent sweeps share the work and never wait or
    deadlock), loads those workflows (:func:`txn.lock_many`, in id order, already ours), fires
    each timer and commits once, writing the batch's workflows with one statement per table; the
    tasks the batch handed to workers are sent after that commit, ``DISPATCH_BATCH`` to a message.

    ``run`` (default ``TIMER_RUN_INLINE``): a trigger or interval task that a timer makes ready is
    claimed by the same transaction (EXECUTING under a lease of this sweep) and, after the
    commit, run by this sweep and applied with the rest of its batch in one transaction
    (``services.claimed_run``: its lease beats while it runs, so a sweep that dies leaves it to
    recovery), instead of going to a worker in a ``run_nodes`` message that claims it again. The
    sweep does so while the inline budget lasts (``INLINE_SECONDS`` from its start); later batches
    dispatch as before, as does a sweep called inside a transaction of its caller.

    A timer whose firing raises never rolls back the others. A batch is fired first without
    savepoints (nothing fails, as a rule, and two savepoint statements per timer cost a quarter
    of a sweep's CPU); when a timer raises, that attempt is rolled back as a whole and the batch
    is fired again without it, each timer in a savepoint of its own, as is every later batch of
    the sweep. A timer that raised is logged, stays PENDING (the table is the truth; fix the cause and
    the next sweep fires it) and is not tried again in this sweep; the rest of its batch commits.
    A database outage ends the sweep with its error.
    """
    from .services import BatchRun, claimed_run  # services imports this module

    cap = int(dagger_settings.MAX_TASKS_PER_TRIGGER if limit is None else limit)
    size = max(1, int(dagger_settings.TIMER_BATCH))
    inline = bool(dagger_settings.TIMER_RUN_INLINE if run is None else run)
    # User code never runs inside a transaction: under a caller's, the claims would not be
    # committed before the hooks run, so the tasks go to workers.
    inline = inline and not transaction.get_connection().in_atomic_block
    deadline = time.monotonic() + float(dagger_settings.INLINE_SECONDS)
    sweep = uuid.uuid4().hex
    fired = 0
    failed: list[int] = []
    careful = False
    ran = BatchRun()
    # The tasks of fired timers go to workers DISPATCH_BATCH at a time; a batch that cannot be
    # sent is owed, and the recovery sweep sends it.
    with ports.dispatch_in_batches(on_failure=recovery.dispatch_owed_targets):
        while fired + len(failed) < cap:
            batch = min(size, cap - fired - len(failed))
            lease = (
                f"timers:{sweep}:{fired + len(failed)}" if inline and time.monotonic() < deadline else None
            )
            # What the firing wrote is taken from memory by the apply that follows (state.Reuse).
            reuse = Reuse() if lease is not None else None
            try:
                result = _timers_fire_batch(
                    limit=batch, exclude=failed, savepoints=careful, lease=lease, reuse=reuse
                )
            except StepRaised as raised:  # rolled back as a whole: again, a savepoint per timer
                careful = True
                if raised.key is None:  # the batch's writes failed: each in a savepoint now
                    result = _timers_fire_batch(limit=batch, exclude=failed, savepoints=True, lease=lease)
                else:
                    logger.error(
                        "timer %s failed to fire; it stays pending for the next sweep",
                        raised.key,
                        exc_info=raised.__cause__,
                    )
                    failed.append(raised.key)
                    if batch == 1:
                        continue
                    result = _timers_fire_batch(limit=batch - 1, exclude=failed, savepoints=True, lease=lease)
            if result is None:
                break
            done, bad, claimed = result
            fired += done
            failed.extend(bad)
            if claimed:
                # What the sweep committed for workers so far goes now, not after its hooks ran.
                ports.dispatch_batched_flush()
                claimed_run(claimed, ran, deadline=deadline, reuse=reuse)
    return fired


def _timers_fire_batch(
    *,
    limit: int,
    exclude: list[int],
    savepoints: bool,
    lease: str | None = None,
    reuse: Reuse | None = None,
) -> tuple[int, list[int], list[tuple[Work, str]]] | None:
    """One transaction: claim up to ``limit`` due timers (one per workflow) and fire them. Returns
    ``(fired, [ids of the timers that failed], [the nodes claimed to run])``, or None when nothing
    is due.

    ``savepoints``: each timer fires in a savepoint, and one that raises is rolled back alone;
    otherwise the first one that raises rolls the whole transaction back (``txn.StepRaised``, its
    ``key`` the timer's id; None when the batch's writes failed). ``lease``: the nodes that firing
    makes ready to run are claimed under ``<lease>:<position>`` (:func:`timer_fire_locked`).
    ``reuse``: keeps what a batch fired without savepoints wrote, once committed, for the
    transaction that applies the claimed nodes' results (an outermost transaction only: the
    sweep runs nodes inline only then).
    """
    if reuse is not None and savepoints:
        reuse.drop()
        reuse = None
    fired = 0
    failed: list[int] = []
    claimed: list[tuple[Work, str]] = []
    states: list[WorkflowState] = []
    with transaction.atomic():
        due_timers, marked, seen = _timers_claim_due(now=ports.now(), limit=limit, exclude=exclude)
        while not due_timers and seen:
            # Every timer it locked had been fired meanwhile (a concurrent sweep committed them
            # after this statement's snapshot): look again, with a fresh snapshot.
            due_timers, marked, seen = _timers_claim_due(now=ports.now(), limit=limit, exclude=exclude)
        if not due_timers:
            return None
        ids = (due.workflow_id for due in due_timers)  # locked by the claim: no wait
        loaded = lock_many(ids) if reuse is None else reuse.lock(ids)
        for position, due in enumerate(due_timers):
            row = loaded.get(due.workflow_id)
            if row is None:  # cannot happen (the claim locked it); the timer is spent
                fired += 1
                continue
            with batch_step(savepoints=savepoints, key=due.id) as step:
                state = WorkflowState(*row)
                timer_fire_locked(
                    state,
                    timer_id=due.id,
                    node_id=due.node_id,
                    purpose=due.purpose,
                    attempt=due.attempt,
                    marked=marked,
                    lease=None if lease is None else f"{lease}:{position}",
                    claimed=claimed,
                    deferred=not savepoints,
                )
            if step.error is not None:
                key = row[0].business_key
                logger.error(
                    "timer %s of node %s of workflow %s (business key %r) failed to fire; "
                    "it stays pending for the next sweep",
                    due.id,
                    due.node_id,
                    due.workflow_id,
                    key,
                    exc_info=step.error,
                    extra=logs.extra(due.workflow_id, key, None if due.node_id is None else str(due.node_id)),
                )
                failed.append(due.id)
                if marked:  # the claim's mark is outside the savepoint: take it back
                    transition(
                        Timer.objects.filter(pk=due.id, status=TimerStatus.FIRED),
                        TimerStatus.PENDING,
                        fired_at=None,
                    )
                continue
            states.append(state)
            fired += 1
        if not savepoints:
            batch_write(states)
            if reuse is not None:
                reuse.keep(states)
    if reuse is not None:
        reuse.committed()
    return fired, failed, claimed


_CLAIM_SQL: dict[str, str] = {}


def _timers_claim_due(
    *, now: dt.datetime, limit: int, exclude: list[int]
) -> tuple[list[_DueTimer], bool, int]:
    """Lock the workflows of up to ``limit`` of the earliest due timers, skipping locked rows, and
    keep the earliest timer of each workflow. Returns ``(timers, marked, seen)``: the timers,
    earliest first, and how many due timers the statement locked, stale ones included (none
    returned while some were seen: look again).

    One timer per workflow: each fires in its own savepoint on its workflow's state, so a failure
    rolls back that timer alone. A second timer of the same workflow stays PENDING (locked until
    this transaction ends, then the next batch takes it, with the first one's effect loaded).

    On PostgreSQL one statement, compiled once per process, locks, keeps one per workflow, and
    marks the kept timers FIRED (``marked``); elsewhere the ORM (SQLite has no row locks: its
    writers are serialised), and each timer is marked when it fires.
    """
    conn = transaction.get_connection()
    if conn.vendor != "postgresql":
        rows = (
            Timer.objects.select_for_update(skip_locked=True, of=("workflow",))
            .select_related("workflow")
            .filter(status=TimerStatus.PENDING, due_at__lte=now)
            .exclude(pk__in=exclude)
            .order_by("due_at", "id")
            .values_list("id", "workflow_id", "node_id", "purpose", "attempt")[:limit]
        )
        kept: dict[Any, _DueTimer] = {}
        for row in rows:
            kept.setdefault(row[1], _DueTimer(*row))
        return list(kept.values()), False, len(kept)
    sql = _CLAIM_SQL.get(conn.alias)
    if sql is None:
        qn = conn.ops.quote_name
        timer, workflow = qn(Timer._meta.db_table), qn(Workflow._meta.db_table)
        # The locking query cannot keep one row per workflow itself (DISTINCT ON and FOR UPDATE
        # do not mix): a materialised CTE locks, the next one picks, the UPDATE marks. Only the
        # workflow rows are locked: a timer row changes only under its workflow's lock, and a
        # lock taken on a timer whose workflow is then skipped would stay held to the end of the
        # transaction, where the sweep that does hold that workflow could wait for it. The
        # UPDATE checks the status again: a timer fired and committed by the workflow's previous
        # holder after this statement's snapshot is re-read there and left out (it still took a
        # place under the LIMIT: the count of locked rows tells "all stale" from "none due",
        # and the row of NULLs joined on keeps that count when nothing is marked). ORDER BY due_at
        # alone, the order of the partial index on PENDING timers: the claim reads K rows of it
        # (2 ms with 10,000 due); a tie-breaker would sort every due timer each time (45 ms).
        sql = (
            "WITH locked AS MATERIALIZED ("
            f"SELECT t.id, t.workflow_id, t.due_at FROM {timer} t JOIN {workflow} w ON w.id = t.workflow_id"
            " WHERE t.status = %s AND t.due_at <= %s AND NOT (t.id = ANY(%s))"
            " ORDER BY t.due_at LIMIT %s FOR UPDATE OF w SKIP LOCKED"
            "), kept AS (SELECT DISTINCT ON (workflow_id) id, due_at FROM locked"
            " ORDER BY workflow_id, due_at, id"
            f"), marked AS (UPDATE {timer} SET status = %s, fired_at = %s FROM kept"
            f" WHERE {timer}.id = kept.id AND {timer}.status = %s"
            f" RETURNING {timer}.id, {timer}.workflow_id, {timer}.node_id, {timer}.purpose,"
            f" {timer}.attempt, kept.due_at"
            ") SELECT (SELECT count(*) FROM locked), m.id, m.workflow_id, m.node_id, m.purpose,"
            " m.attempt, m.due_at FROM (SELECT 1) AS one LEFT JOIN marked m ON true"
        )
        _CLAIM_SQL[conn.alias] = sql
    # The due timers are the PENDING ones, the only status a timer is FIRED from (the UPDATE's guard).
    pending = sole_source(TIMER_TRANSITIONS, TimerStatus.FIRED)
    params = [pending, now, list(exclude), limit, TimerStatus.FIRED.value, now, pending]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    seen = int(rows[0][0])
    rows = sorted((row[1:] for row in rows if row[1] is not None), key=lambda r: (r[5], r[0]))
    return [_DueTimer(*row[:5]) for row in rows], True, seen  # earliest first, as they were due


# -- sweeps scheduled ahead (precision) ----------------------------------------------------------
#: Timers due within this many seconds of the first of them share one precision sweep.
SWEEP_BUCKET_SECONDS = 0.05
#: A bucket gets one precision sweep per this many timers, at most SWEEPS_PER_BUCKET (they run
#: in parallel on several worker processes and share the work through SKIP LOCKED), and always
#: enough of them to fire the whole bucket (each fires at most MAX_TASKS_PER_TRIGGER).
TIMERS_PER_SWEEP = 500
SWEEPS_PER_BUCKET = 4


def timers_dispatch_upcoming(*, horizon: float | None = None, limit: int | None = None) -> int:
    """Schedule sweeps (Celery countdowns) at the due times of the timers due before the next
    regular sweep. Returns the number of sweeps scheduled.

    This is what makes a timer fire on time rather than at the next sweep, for timers created
    too far ahead to be sent with a countdown at creation. It sends sweeps, not one message per
    timer: a burst of timers due in the same instant costs a few messages, and a sweep fires
    timers several times faster than one message each (measured: docs/time.md). Timers due
    within ``SWEEP_BUCKET_SECONDS`` of each other share a sweep, scheduled at the last of them.

    Each regular sweep looks at the timers due between half an interval and one and a half
    intervals from now (``horizon``, default ``TRIGGER_INTERVAL``, is the window's length), so
    sweeps one interval apart tile the time line. A sweep scheduled twice is harmless, one that is
    missed or lost leaves its timers to the next regular sweep. ``limit`` (default
    ``MAX_TASKS_PER_TRIGGER``) caps the distinct due times read.
    """
    now = ports.now()
    interval = float(dagger_settings.TRIGGER_INTERVAL)
    start = now + dt.timedelta(seconds=interval / 2)
    end = start + dt.timedelta(seconds=interval if horizon is None else horizon)
    cap = int(dagger_settings.MAX_TASKS_PER_TRIGGER if limit is None else limit)
    rows = list(
        Timer.objects.filter(status=TimerStatus.PENDING, due_at__gt=start, due_at__lte=end)
        .values("due_at")
        .annotate(n=Count("id"))
        .order_by("due_at")
        .values_list("due_at", "n")[:cap]
    )
    buckets: list[tuple[dt.datetime, dt.datetime, int]] = []  # (first due, last due, timers)
    for due_at, n in rows:
        if buckets and (due_at - buckets[-1][0]).total_seconds() <= SWEEP_BUCKET_SECONDS:
            first, _, count = buckets[-1]
            buckets[-1] = (first, due_at, count + n)
        else:
            buckets.append((due_at, due_at, n))
    dispatcher = ports.get_dispatcher()
    sent = 0
    per_sweep = max(1, int(dagger_settings.MAX_TASKS_PER_TRIGGER))
    for _, last, count in buckets:
        # Enough sweeps to fire the whole bucket, and a few in parallel for a large one.
        sweeps = max(-(-count // per_sweep), min(SWEEPS_PER_BUCKET, -(-count // TIMERS_PER_SWEEP)))
        try:
            dispatcher.sweep_timers(eta=last, count=sweeps)
        except Exception as exc:  # noqa: BLE001 - precision only: the regular sweeps fire them
            logger.warning("could not schedule timer sweeps (%r); the regular sweep fires the timers", exc)
            break
        sent += sweeps
    return sent
