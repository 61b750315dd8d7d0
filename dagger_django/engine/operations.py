"""What an operator does to move a workflow on: resume a stopped workflow, skip or complete a
waiting or failed task, fire a timer now, replay a message.

Stop, retry and runtime-parameter edits are the services' (``engine/services.py``:
``workflow_stop``, ``workflow_retry``, ``workflow_update_parameters``); this room holds the
operations added for operators since, each built the same way: the workflow's transaction
through the door (:func:`~.txn.locked`), one history event that carries who acted (``actor``,
e.g. a user name) and why (``reason``), and any Celery message sent after commit by
:func:`~.txn.commit`. A request that the workflow's state does not allow raises
:class:`~dagger_django.exceptions.TaskInvalidState` (the API's 409) and changes nothing.

Which nodes an operator may skip or complete is one rule, :func:`node_refusal`, used by the
operations and by the pages that offer the buttons.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction

from ..exceptions import (
    MessageDoesNotExist,
    NodeDoesNotExist,
    TaskInvalidState,
    TimerDoesNotExist,
    WorkflowDoesNotExist,
)
from ..models import HistoryRecord, InboxMessage, Node, NodeKind, NodeType, Status, StopHook, Timer
from ..models.history import history_fields
from ..models.status import TERMINAL, WORKER_KINDS, TimerPurpose, TimerStatus
from . import correlation, messages, timing, walker
from .state import WorkflowState
from .timers import timer_fire_locked
from .txn import lock, locked, workflow_uuid

S = Status

#: History reasons of the operations here (the node's or the workflow's event).
RESUMED = "resumed"
SKIPPED_BY_OPERATOR = "skipped_by_operator"
COMPLETED_BY_OPERATOR = "completed_by_operator"
TIMER_FIRED_BY_OPERATOR = "timer_fired_by_operator"


def operator_detail(actor: str | None, reason: str | None) -> dict[str, Any] | None:
    """What the history keeps of an operator's action: who (``actor``) and why (``reason``, at
    most 1,000 characters), as text any column takes (no NUL, no lone surrogate)."""
    detail = {
        "actor": messages.clean_text(actor or "", 150),
        "reason": messages.clean_text((reason or "").strip(), 1000),
    }
    return {name: value for name, value in detail.items() if value} or None


# ==================================================================================================
# resume
# ==================================================================================================
def workflow_resume(*, workflow_id: Any, actor: str | None = None, reason: str | None = None) -> Any:
    """A STOPPED workflow continues where the stop left it.

    The nodes that stop ended (those its transaction made STOPPED, read from the workflow's
    history; not those that had finished, nor those an ATLEAST_ONE group had stopped before)
    go back: a node that had not started is NOT_STARTED again; a task that was handed to a
    worker or running is handed to a worker again (a new attempt, the retry budget anew, as a
    retry does); a listener waits again, its subscription restored on the current runtime
    parameters; a trigger or interval task waits for its time again (at once if it has passed);
    a process gets a fresh ``max_run_duration`` deadline. The workflow gets back the status it
    was stopped in (EXECUTING, or FAILURE: then retry it) in a ``resumed`` event that records
    ``actor`` and ``reason``.

    Refused (:class:`TaskInvalidState`): a workflow that is not STOPPED, one stopped before it
    started (create a new one), and one whose ``stop`` hooks have not all run yet: a hook runs
    after the stop's commit and may undo work outside (cancel a job); resuming first would let
    it undo what the resumed task does. Try again once the history shows them run.
    """
    with locked(workflow_id) as state:
        wf = state.workflow
        if wf.status != S.STOPPED:
            raise TaskInvalidState(f"Only a STOPPED workflow can be resumed; {wf.id} is {wf.status}.")
        owed = [n.name for n in state.nodes.values() if n.stop_hook == StopHook.PENDING]
        if owed:
            raise TaskInvalidState(
                f"Workflow {wf.id}: the stop hooks of {', '.join(sorted(owed))} have not run yet; "
                "resume it once they have."
            )
        before, stopped = _stopped_by_the_stop(state)
        if before not in (S.EXECUTING, S.FAILURE):
            raise TaskInvalidState(
                f"Workflow {wf.id} was stopped while {before or 'unknown'}; only a workflow stopped "
                "while running (or failed) can be resumed."
            )
        state.set_workflow_status(before, reason=RESUMED, detail=operator_detail(actor, reason))
        for node in sorted(state.nodes.values(), key=lambda n: n.position):
            was = stopped.get(node.id)
            if was is not None and node.status == S.STOPPED:
                _resume_node(state, node, was)
        correlation.subscriptions_restore(state)
    return state.workflow


def _stopped_by_the_stop(state: WorkflowState) -> tuple[str, dict[uuid.UUID, str]]:
    """``(the workflow's status before its stop, {node id: its status before the stop})`` from
    the history record of the stop's transaction (the latest that stopped the workflow)."""
    records = HistoryRecord.objects.filter(workflow_id=state.workflow.id).order_by("-id")
    for record in records.iterator(chunk_size=50):
        events = [history_fields(event) for event in record.events]
        stop = next((e for e in events if e[0] is None and e[2] != S.STOPPED and e[3] == S.STOPPED), None)
        if stop is None:
            continue
        nodes = {e[0]: e[2] for e in events if e[0] is not None and e[3] == S.STOPPED and e[2] != S.STOPPED}
        return stop[2], nodes
    return "", {}


def _resume_node(state: WorkflowState, node: Node, was: str) -> None:
    if node.stop_hook != StopHook.NONE:
        node.stop_hook = StopHook.NONE  # it may be stopped again: its hook is owed anew then
        node.stop_hook_at = None
    if was == S.NOT_STARTED:
        node.time_submitted = None
        state.set_status(node, S.NOT_STARTED, reason=RESUMED)
        return
    kind = node.kind
    if node.node_type == NodeType.LEAF:
        node.config = {**node.config, timing.RETRY_BASE: node.attempts}
    if kind in (NodeKind.PROCESS, NodeKind.PARALLEL):
        state.set_status(node, S.EXECUTING, reason=RESUMED)
        if kind == NodeKind.PROCESS:
            timing.process_started(state, node)  # a fresh max_run_duration deadline
    elif kind in WORKER_KINDS or was == S.SUBMITTED:
        walker.submit_to_worker(state, node, reason=RESUMED)
    elif kind == NodeKind.LISTENER:
        state.set_status(node, S.EXECUTING, reason=RESUMED)
        correlation.listener_started(state, node)  # messages buffered for it
        if node.id not in state.to_dispatch and messages.deliveries_waiting(state, node):
            state.to_dispatch.append(node.id)  # messages that arrived before the stop
    elif kind in (NodeKind.TRIGGER, NodeKind.INTERVAL):
        timing.start_timed(state, node)
    elif kind == NodeKind.MONITOR:
        due = node.config.get("time_to_execute")
        due_at = None if due is None else timing.epoch_to_datetime(due)
        if due_at is None or due_at <= state.now:
            walker.submit_to_worker(state, node, reason=RESUMED)
        else:
            state.set_status(node, S.EXECUTING, reason=RESUMED, detail={"due_at": due_at.isoformat()})
            timing.add_timer(state, node, purpose=TimerPurpose.MONITOR, due_at=due_at)
    else:  # pragma: no cover - kinds are a closed set
        state.set_status(node, S.EXECUTING, reason=RESUMED)
    state.touch(node)


# ==================================================================================================
# skip and complete a task
# ==================================================================================================
def node_refusal(
    *,
    node_type: str,
    kind: str,
    status: str,
    waits_on_time: bool,
    workflow_status: str,
    failure_policy: str = "halt",
) -> str | None:
    """Why an operator may not skip or complete this node now, or None when they may.

    Allowed: a task that waits - a listener waiting for its message, a trigger or interval
    task waiting for its time, a task waiting for its retry's backoff (``waits_on_time``: it
    has a pending timer) - and a FAILURE task of a workflow that halted on failure (the default
    ``failure_policy``), in a workflow that is EXECUTING or FAILURE.
    """
    if workflow_status not in (S.EXECUTING, S.FAILURE):
        return f"the workflow is {workflow_status}"
    if node_type != NodeType.LEAF:
        return "it is a process or a parallel group; skip or complete its tasks"
    if kind == NodeKind.MONITOR:
        return "it is a monitor (the engine runs it)"
    if status == S.FAILURE:
        if failure_policy == "continue":
            return "it failed and the workflow went on past it (failure_policy='continue')"
        return None
    if status in TERMINAL:
        return f"it has already finished ({status})"
    if status == S.NOT_STARTED:
        return "it has not started"
    if kind == NodeKind.LISTENER and status == S.EXECUTING:
        return None
    if waits_on_time and status in (S.EXECUTING, S.SUBMITTED):
        return None
    return f"it is running ({status}); stop the workflow instead"


def node_skip(*, workflow_id: Any, node_id: Any, actor: str | None = None, reason: str | None = None) -> Any:
    """A waiting or failed task is SKIPPED and the workflow moves on as after a skipped branch
    (the next task starts; a process whose tasks ended so ends with them). Its pending messages
    (deliveries) are IGNORED, its timers cancelled and its subscription removed (kept for a
    listener with ``allow_skip_to``, which still takes its message when skipped), all in this
    transaction. The node's ``skipped_by_operator`` event records ``actor`` and ``reason``.
    See :func:`node_refusal` for which tasks qualify; anything else raises TaskInvalidState."""
    return _node_end(workflow_id, node_id, S.SKIPPED, SKIPPED_BY_OPERATOR, actor=actor, reason=reason)


def node_complete(
    *, workflow_id: Any, node_id: Any, actor: str | None = None, reason: str | None = None
) -> Any:
    """A waiting or failed task is COMPLETED as if it had succeeded (no user code runs: a
    listener's ``on_message``, a trigger's ``execute`` are not called) and the next step is
    dispatched. Its pending messages, timers and subscription are closed as :func:`node_skip`
    closes them (a listener with ``reprocess_on_message`` keeps its subscription). A decision
    task cannot be completed (it would choose no branch): skip it, or retry the workflow."""
    return _node_end(workflow_id, node_id, S.COMPLETED, COMPLETED_BY_OPERATOR, actor=actor, reason=reason)


def _node_end(
    workflow_id: Any, node_id: Any, to: str, why: str, *, actor: str | None, reason: str | None
) -> Any:
    with locked(workflow_id) as state:
        wf = state.workflow
        node = _node_of(state, node_id)
        waits = Timer.objects.filter(workflow_id=wf.id, node_id=node.id, status=TimerStatus.PENDING).exists()
        refusal = node_refusal(
            node_type=node.node_type,
            kind=node.kind,
            status=node.status,
            waits_on_time=waits,
            workflow_status=wf.status,
            failure_policy=wf.failure_policy,
        )
        if refusal is None and to == S.COMPLETED and node.kind == NodeKind.DECISION:
            refusal = "a decision cannot be completed without choosing a branch; skip it or retry"
        if refusal is None and node.status == S.FAILURE and walker.inside_ended_container(state, node):
            refusal = "it is inside a process or group that has already ended"
        verb = "skipped" if to == S.SKIPPED else "completed"
        if refusal is not None:
            raise TaskInvalidState(f"{node.name} cannot be {verb}: {refusal}.")
        reopened = node.status == S.FAILURE and _reopen(state, node, verb)
        if node.kind == NodeKind.LISTENER:
            messages.deliveries_close(state, node, outcome=why)
        node.lease = ""
        walker.finish(state, node, to, reason=why, detail=operator_detail(actor, reason))
        if reopened:
            _advance_deferred(state)
    return state.workflow


def _node_of(state: WorkflowState, node_id: Any) -> Node:
    try:
        key = uuid.UUID(str(node_id))
    except (TypeError, ValueError) as exc:
        raise NodeDoesNotExist(f"Workflow {state.workflow.id} has no node {node_id!r}.") from exc
    node = state.get(key)
    if node is None:
        raise NodeDoesNotExist(f"Workflow {state.workflow.id} has no node {node_id}.")
    return node


def _reopen(state: WorkflowState, leaf: Node, verb: str) -> bool:
    """A FAILURE task is about to end otherwise: what its failure ended (the containers above
    it, the workflow) is EXECUTING again, as a retry reopens them. True if the workflow was
    FAILURE (then the nodes that finished meanwhile walk on too: :func:`_advance_deferred`)."""
    reopened = state.workflow.status == S.FAILURE
    if reopened:
        state.set_workflow_status(S.EXECUTING, reason=f"node_{verb}", detail={"node": leaf.name})
    child = leaf
    parent = state.get(leaf.parent_id)
    while parent is not None:
        if parent.status == S.FAILURE:
            state.set_status(parent, S.EXECUTING, reason=f"node_{verb}")
            if parent.kind == NodeKind.PROCESS:
                timing.process_started(state, parent)
        if parent.kind == NodeKind.PARALLEL and parent.status == S.EXECUTING:
            head = str(walker.branch_head(state, parent, child))
            branches = parent.config.get("_branches", {})
            if branches.get(head) == S.FAILURE:
                parent.config = {
                    **parent.config,
                    "_branches": {k: v for k, v in branches.items() if k != head},
                }
                state.touch(parent)
        child, parent = parent, state.get(parent.parent_id)
    leaf.error = ""
    return reopened


def _advance_deferred(state: WorkflowState) -> None:
    wf = state.workflow
    deferred = list(wf.deferred_node_ids)
    if not deferred:
        return
    wf.deferred_node_ids = []
    state.touch_workflow("deferred_node_ids")
    for nid in deferred:
        node = state.get(nid)
        if node is not None and state.active:
            walker.advance(state, node)


# ==================================================================================================
# timers
# ==================================================================================================
def timer_fire_now(
    *, timer_id: Any, workflow_id: Any = None, actor: str | None = None, reason: str | None = None
) -> Any:
    """Fire a PENDING timer now, before it is due, in the workflow's transaction, through the
    path the sweep uses (``timers.timer_fire_locked``): a trigger runs, an interval polls, a
    retry's backoff ends, a deadline passes. A ``timer_fired_by_operator`` event on the timer's
    node records ``actor`` and ``reason``. Given ``workflow_id``, the timer must be one of its.
    A timer that has fired or was cancelled raises TaskInvalidState and nothing changes."""
    try:
        pk = int(str(timer_id))
    except (TypeError, ValueError) as exc:
        raise TimerDoesNotExist(f"No timer with id {timer_id!r}.") from exc
    row = (
        Timer.objects.filter(pk=pk)
        .values("workflow_id", "node_id", "purpose", "status", "attempt", "due_at")
        .first()
        if -(2**63) <= pk < 2**63
        else None
    )
    if row is None or (workflow_id is not None and row["workflow_id"] != _uuid_or_none(workflow_id)):
        raise TimerDoesNotExist(
            f"No timer {timer_id}" + (f" in workflow {workflow_id}." if workflow_id else ".")
        )
    with transaction.atomic():
        state = lock(row["workflow_id"])
        if state is None:
            raise WorkflowDoesNotExist(f"No workflow with id {row['workflow_id']}.")
        if state.workflow.status not in (S.EXECUTING, S.FAILURE):
            raise TaskInvalidState(
                f"Workflow {state.workflow.id} is {state.workflow.status}; its timers do not fire."
            )
        node = state.get(row["node_id"])
        detail = {"timer": pk, "purpose": row["purpose"], "due_at": row["due_at"].isoformat()}
        state.record(
            reason=TIMER_FIRED_BY_OPERATOR,
            detail={**detail, **(operator_detail(actor, reason) or {})},
            node=node,
        )
        fired = timer_fire_locked(
            state, timer_id=pk, node_id=row["node_id"], purpose=row["purpose"], attempt=row["attempt"]
        )
        if not fired:
            status = Timer.objects.filter(pk=pk).values_list("status", flat=True).first()
            raise TaskInvalidState(f"Timer {pk} is {status}: it has already fired or was cancelled.")
    return state.workflow


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return workflow_uuid(value)
    except WorkflowDoesNotExist:
        return None


# ==================================================================================================
# messages
# ==================================================================================================
def message_replay(*, inbox_id: Any, actor: str | None = None, reason: str | None = None) -> Any:
    """Route a recorded message again (``messages.message_replay``), recording ``actor`` and
    ``reason`` on the inbox row and in the history of each workflow it is delivered to. An id
    that names no message raises :class:`MessageDoesNotExist`."""
    try:
        pk = int(str(inbox_id))
    except (TypeError, ValueError) as exc:
        raise MessageDoesNotExist(f"No inbox message with id {inbox_id!r}.") from exc
    if not -(2**63) <= pk < 2**63:
        raise MessageDoesNotExist(f"No inbox message with id {inbox_id!r}.")
    try:
        return messages.message_replay(inbox_id=pk, actor=actor, reason=reason)
    except InboxMessage.DoesNotExist as exc:
        raise MessageDoesNotExist(f"No inbox message with id {pk} (it may have been pruned).") from exc


__all__ = [
    "message_replay",
    "node_complete",
    "node_refusal",
    "node_skip",
    "operator_detail",
    "timer_fire_now",
    "workflow_resume",
]
