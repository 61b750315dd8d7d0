"""Waits on time inside the walker: triggers (and, with the time-driven issue, intervals and monitors).

A wait is a :class:`~dagger_django.models.Timer` row written in the same transaction as the
node's status. The row is the truth; the dispatcher is also asked to fire it with a countdown
after commit, so firing does not wait for the next sweep.
"""

from __future__ import annotations

import datetime as dt

from ..exceptions import InvalidTriggerTimeForTask
from ..models import Node, NodeKind, Status, Timer, TimerPurpose
from .state import WorkflowState

S = Status


def epoch_to_datetime(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


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
    return timer


def process_started(state: WorkflowState, node: Node) -> None:
    """A process began executing: set up its deadline and monitor (the time-driven issue)."""


def before_flush(state: WorkflowState) -> None:
    """Close the waits of nodes that ended in this transition."""
    for node in state.ended:
        state.cancel_timers_for.add(node.id)


def fire(state: WorkflowState, node: Node, *, purpose: str) -> None:
    """A timer of ``node`` is due (it was claimed by the caller): act on its purpose."""
    from .walker import submit_to_worker

    if purpose == TimerPurpose.RETRY and node.status == S.SUBMITTED:
        state.to_dispatch.append(node.id)
    elif purpose == TimerPurpose.TRIGGER and node.status == S.EXECUTING:
        submit_to_worker(state, node, reason="trigger_due")


def start_timed(state: WorkflowState, node: Node) -> None:
    from .walker import submit_to_worker

    if node.kind == NodeKind.TRIGGER:
        due = node.config.get("time_to_execute")
        if due is None:
            # The template resolved it at creation; a missing value here means a corrupt row.
            raise InvalidTriggerTimeForTask(f"{node.name}: no time_to_execute recorded")
        due_at = epoch_to_datetime(due)
        if due_at <= state.now:
            submit_to_worker(state, node, reason="trigger_due")
            return
        state.set_status(node, S.EXECUTING, reason="waiting_for_time", detail={"due_at": due_at.isoformat()})
        add_timer(state, node, purpose=TimerPurpose.TRIGGER, due_at=due_at)
        return
    raise InvalidTriggerTimeForTask(
        f"{node.name}: {node.kind} tasks are not supported by this version of dagger_django yet"
    )
