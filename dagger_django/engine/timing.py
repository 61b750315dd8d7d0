"""Waits on time: triggers, interval polls, monitors, process deadlines and retry backoff.

Every wait is a :class:`~dagger_django.models.Timer` row written in the same transaction as the
node's status; the row is the truth. After commit the dispatcher is asked to fire timers that are
due soon with a countdown (precision), and the periodic sweep (``timers.timers_fire_due``)
fires whatever is due and was not fired yet (safety). Either way a timer fires through
:func:`fire`, inside the transaction that holds the workflow's lock, and firing twice is a no-op
(the compare-and-set on the timer's status).

The walker calls :func:`start_timed`, :func:`process_started` and :func:`before_flush`; the
services call :func:`run_worker_hooks` (the user code of interval and monitor tasks, outside any
transaction) and :func:`interval_wait` (an interval poll said "not yet"). See ``docs/time.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from ..definitions.enums import COMPLETE_BY_KEY
from ..definitions.graph import MAX_EPOCH_SECONDS
from ..definitions.ids import new_id
from ..definitions.tasks import resolve_hook_result
from ..exceptions import InvalidTaskResult, InvalidTriggerTimeForTask, TaskInvalidState
from ..models import Node, NodeKind, NodeType, Status, Timer, TimerPurpose
from ..models.status import QUIET_FOR_MONITOR, TERMINAL
from . import logs, ports
from .hooks import call_hook
from .state import WorkflowState

logger = logging.getLogger("dagger_django.engine")
S = Status

#: node.config key the retry policy subtracts from ``attempts`` (``services._fail_or_retry``): an
#: interval task sets it at each poll, so a poll's failures are counted, not every poll's attempt.
RETRY_BASE = "retry_base"


class _PollAgain:
    """What an interval task's worker step returns when ``interval_execute`` said False."""

    def __repr__(self) -> str:
        return "POLL_AGAIN"


POLL_AGAIN: Any = _PollAgain()


# -- values -----------------------------------------------------------------------------------------
def epoch_to_datetime(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


def parse_epoch(value: Any) -> float | None:
    """Epoch seconds from a number or a numeric string; None when it is not a valid epoch."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0 or number > MAX_EPOCH_SECONDS:
        return None
    return number


def _config_time(node: Node, key: str) -> dt.datetime | None:
    value = node.config.get(key)
    return None if value is None else epoch_to_datetime(value)


def add_timer(state: WorkflowState, node: Node, *, purpose: str, due_at: dt.datetime) -> Timer:
    timer = Timer(
        workflow_id=state.workflow.id,
        node_id=node.id,
        purpose=purpose,
        due_at=due_at,
        attempt=node.attempts,
        created_at=state.now,
    )
    state.timers.append(timer)
    # Mirrored on the node: recovery leaves a node that waits on time alone (state.recovery_marks).
    node.waiting = node.attempts
    state.mark(node)
    return timer


# -- hooks called by the walker ---------------------------------------------------------------------
def start_timed(state: WorkflowState, node: Node) -> None:
    """The walk reached a trigger or an interval task.

    Unlike the original, no timer exists before the walk reaches the task (the original stored a
    trigger row at creation and re-examined it every tick while the task was NOT_STARTED): the
    timer is created here, and a time already past runs the task at once.
    """
    if node.kind == NodeKind.TRIGGER:
        if node.config.get("time_to_execute") is None:
            # The template resolved it at creation; a missing value here means a corrupt row.
            raise InvalidTriggerTimeForTask(f"{node.name}: no time_to_execute recorded")
        _wait_or_submit(
            state, node, _config_time(node, "time_to_execute"), TimerPurpose.TRIGGER, "trigger_due"
        )
        return
    if node.kind == NodeKind.INTERVAL:
        # The first poll runs at the optional start time, or at once.
        _wait_or_submit(
            state, node, _config_time(node, "time_to_execute"), TimerPurpose.INTERVAL, "interval_poll"
        )
        return
    if node.kind == NodeKind.MONITOR:
        raise TaskInvalidState(f"{node.name}: monitors are created by the engine and never reached by a walk")
    raise TaskInvalidState(f"{node.name}: {node.kind} is not a time-driven kind")


def _wait_or_submit(
    state: WorkflowState, node: Node, due_at: dt.datetime | None, purpose: str, reason: str
) -> None:
    from .walker import submit_to_worker

    if due_at is None or due_at <= state.now:
        submit_to_worker(state, node, reason=reason)
        return
    state.set_status(node, S.EXECUTING, reason="waiting_for_time", detail={"due_at": due_at.isoformat()})
    add_timer(state, node, purpose=purpose, due_at=due_at)


def process_started(state: WorkflowState, node: Node) -> None:
    """A process began executing: arm its ``max_run_duration`` deadline and its monitor."""
    duration = node.config.get("max_run_duration") or 0
    if float(duration) > 0:
        add_timer(
            state,
            node,
            purpose=TimerPurpose.DEADLINE,
            due_at=state.now + dt.timedelta(seconds=float(duration)),
        )
    monitor_class = node.config.get("monitoring_task_class")
    if monitor_class and not node.config.get("monitoring_task_id"):
        _start_monitor(state, node, monitor_class)


def _start_monitor(state: WorkflowState, process: Node, monitor_class: str) -> None:
    """Create the monitor of a ``MonitoredProcessTemplateDAGInstance`` if ``complete_by_time`` is set.

    The time is read now, when the process starts (as the original did), so a runtime-parameter
    change made before the process starts is honoured. It was validated at creation; a value
    changed into something that is not epoch seconds since then is recorded and ignored.
    """
    from .walker import submit_to_worker

    raw = state.workflow.runtime_parameters.get(COMPLETE_BY_KEY)
    if raw is None:
        return
    when = parse_epoch(raw)
    if when is None:
        error = f"runtime parameter {COMPLETE_BY_KEY!r} = {raw!r} is not epoch seconds; no monitor started"
        wf = state.workflow
        logger.warning(
            "%s of workflow %s (business key %r): %s",
            process.name,
            wf.id,
            wf.business_key,
            error,
            extra=logs.extra(wf.id, wf.business_key, process.name),
        )
        state.record(reason="monitor_not_started", detail={"error": error}, node=process)
        return
    monitor = Node(
        id=new_id(),
        workflow_id=state.workflow.id,
        parent_id=None,  # outside the graph, as in the original: nothing follows a monitor
        name=f"{process.name}.{monitor_class.rpartition(':')[2].rpartition('.')[2]}"[:500],
        node_type=NodeType.LEAF,
        kind=NodeKind.MONITOR,
        task_class=monitor_class,
        position=max((n.position for n in state.nodes.values()), default=-1) + 1,
        next_ids=[],
        child_ids=[],
        config={
            "template_name": "monitor",
            "allow_skip_to": False,
            "reprocess_on_message": False,
            "monitored_task_id": str(process.id),
            "time_to_execute": when,
        },
        time_created=state.now,
        updated_at=state.now,
    )
    state.add_node(monitor)
    process.config = {**process.config, "monitoring_task_id": str(monitor.id)}
    state.touch(process)
    due_at = epoch_to_datetime(when)
    if due_at <= state.now:
        submit_to_worker(state, monitor, reason="monitor_due")
        return
    state.set_status(
        monitor,
        S.EXECUTING,
        reason="monitoring",
        detail={"due_at": due_at.isoformat(), "monitored_task_id": str(process.id)},
    )
    add_timer(state, monitor, purpose=TimerPurpose.MONITOR, due_at=due_at)


def before_flush(state: WorkflowState) -> None:
    """Close the waits of nodes that ended in this transition.

    Their pending timers are cancelled (including a process's deadline), timers created in this
    very transaction for them are dropped, and the monitor of an ended process is COMPLETED
    without calling its hook (the process finished first). A monitor already handed to a worker
    (SUBMITTED) is left to it: the worker sees the process finished, skips the hook, completes it.
    """
    i = 0
    while i < len(state.ended):  # completing a monitor below appends to state.ended
        node = state.ended[i]
        i += 1
        state.cancel_timers_for.add(node.id)
        monitor = state.get(node.config.get("monitoring_task_id"))
        if monitor is not None and monitor.status == S.EXECUTING:
            state.set_status(monitor, S.COMPLETED, reason="monitored_task_finished")
    if state.timers and state.ended:
        ended = {n.id for n in state.ended}
        state.timers = [t for t in state.timers if t.node_id not in ended]


# -- firing ---------------------------------------------------------------------------------------
def fire(
    state: WorkflowState,
    node: Node | None,
    *,
    purpose: str,
    attempt: int | None = None,
    timer_id: int | None = None,
) -> None:
    """A timer of ``node`` is due and was claimed by the caller: act on its purpose.

    Nothing happens when the node has ended, when the workflow is stopped or finished, or when the
    timer belongs to an earlier attempt of the node (it was superseded).
    """
    from .walker import submit_to_worker

    if node is not None and node.waiting is not None and (attempt is None or attempt == node.waiting):
        node.waiting = None  # the timer it waited on has fired (a later one sets it again)
        state.mark(node)
    if purpose == TimerPurpose.BUFFER_EXPIRY:
        # Reserved: buffered early messages expire through their own rows and the bridge's sweep
        # (engine/messages.py), not through timers. Nothing to do.
        return
    if node is None or node.status in TERMINAL:
        return
    if state.workflow.status not in (S.EXECUTING, S.FAILURE):
        # Stopped or finished (their timers were cancelled; this is a leftover), or never started.
        return
    if attempt is not None and node.kind != NodeKind.PROCESS and attempt != node.attempts:
        return
    if purpose == TimerPurpose.RETRY:
        if node.status == S.SUBMITTED:
            state.to_dispatch.append(node.id)
    elif node.status != S.EXECUTING:
        return
    elif purpose == TimerPurpose.TRIGGER:
        submit_to_worker(state, node, reason="trigger_due")
    elif purpose == TimerPurpose.INTERVAL:
        submit_to_worker(state, node, reason="interval_poll")
    elif purpose == TimerPurpose.MONITOR:
        _monitor_due(state, node)
    elif purpose == TimerPurpose.DEADLINE:
        _deadline_passed(state, node)


def _monitor_due(state: WorkflowState, monitor: Node) -> None:
    from .walker import submit_to_worker

    monitored = state.get(monitor.config.get("monitored_task_id"))
    if monitored is None or monitored.status in QUIET_FOR_MONITOR:
        state.set_status(monitor, S.COMPLETED, reason="monitored_task_finished")
        return
    submit_to_worker(state, monitor, reason="monitor_due")


def _deadline_passed(state: WorkflowState, process: Node) -> None:
    """``max_run_duration`` is over: the process's unfinished nodes (parallel children included)
    and the process become SKIPPED, then the walk goes on to what follows the process. Tasks that
    were EXECUTING get their ``stop`` hook after commit, as when a workflow is stopped.

    The original also skipped unfinished nodes *before* the process; here only the process's own
    nodes are touched. Trigger-type tasks end SKIPPED too (the original forced them COMPLETED).
    """
    from .walker import finish

    detail = {"max_run_duration": process.config.get("max_run_duration")}
    for node in sorted(state.descendants(process), key=lambda n: n.position):
        if node.status not in TERMINAL:
            if node.status == S.EXECUTING and node.node_type == NodeType.LEAF:
                state.to_stop_hooks.append(node.id)  # it was running or waiting: tell it, as stop does
            state.set_status(node, S.SKIPPED, reason="max_run_duration", detail=detail)
    finish(state, process, S.SKIPPED, reason="max_run_duration", detail=detail)


# -- the worker step of interval and monitor tasks (no transaction open) ---------------------------
def run_worker_hooks(work: Any) -> Any:
    """Run the user code of an interval or monitor task that a worker claimed.

    Interval: before the deadline, ``interval_execute(runtime_parameters)`` is polled; True (or
    the deadline) runs ``execute`` and the task completes; False returns :data:`POLL_AGAIN`. A
    result that is not a bool raises ``InvalidTaskResult``.
    Monitor: ``process_monitored_task(monitored_task, workflow_instance)`` is called once, unless
    the monitored node is COMPLETED, SKIPPED or FAILURE by now.
    """
    task = work.task
    if work.kind == NodeKind.MONITOR:
        monitored_id = getattr(task, "monitored_task_id", None)
        monitored = work.view.get_task(monitored_id) if monitored_id is not None else None
        if monitored is None or monitored.status.code in QUIET_FOR_MONITOR:
            return None
        return call_hook(task.process_monitored_task, monitored, work.view)
    deadline = getattr(task, "time_to_force_complete", None)
    if deadline is None or ports.now() < epoch_to_datetime(deadline):
        ready = resolve_hook_result(call_hook(task.interval_execute, work.params))
        if not isinstance(ready, bool):
            raise InvalidTaskResult(
                f"{work.name}: interval_execute() must return True or False, not {ready!r}"
            )
        if not ready:
            return POLL_AGAIN
    return call_hook(task.execute, work.params, work.view)


def interval_wait(state: WorkflowState, node: Node) -> None:
    """An interval poll said "not yet": wait one period, but never past the deadline.

    The task stays EXECUTING (waiting costs no worker). At or after the deadline it goes straight
    back to a worker, which then runs ``execute`` without polling.
    """
    from .walker import submit_to_worker

    period = float(node.config.get("interval_execute_period") or 0)
    due_at = state.now + dt.timedelta(seconds=period)
    deadline = _config_time(node, "time_to_force_complete")
    if deadline is not None and deadline < due_at:
        due_at = deadline
    node.config = {**node.config, RETRY_BASE: node.attempts}
    state.touch(node)
    state.record(reason="interval_polled", detail={"next": due_at.isoformat()}, node=node)
    if due_at <= state.now:
        submit_to_worker(state, node, reason="interval_deadline")
        return
    add_timer(state, node, purpose=TimerPurpose.INTERVAL, due_at=due_at)


__all__ = [
    "POLL_AGAIN",
    "add_timer",
    "before_flush",
    "epoch_to_datetime",
    "fire",
    "interval_wait",
    "process_started",
    "run_worker_hooks",
    "start_timed",
]
