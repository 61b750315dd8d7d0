"""How a workflow moves: starting nodes, finishing them, and walking to what comes next.

Everything here works on a :class:`~.state.WorkflowState` in memory, inside the transaction
that holds the workflow's lock; nothing here runs user code or touches the database directly.
The rules follow the original Dagger (spec sections 2-3) with the fixes of DESIGN.md section 5:
all-SKIPPED successors end the chain, decisions skip the branches they did not choose, parallel
groups honour their operator at both levels and ATLEAST_ONE stops the losers, stop reaches every
node, and a failure halts the workflow unless its template says ``failure_policy="continue"``.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..conf import dagger_settings
from ..exceptions import InvalidTaskResult, TaskInvalidState
from ..models import Node, NodeKind, NodeType, Status
from ..models.status import ACTIVE, ENDED_FOR_GOOD, STOP_HOOK_TYPES, TERMINAL, WORKER_KINDS
from . import correlation, timing
from .state import WorkflowState

S = Status
JOIN_ALL = "JOIN_ALL"
ATLEAST_ONE = "ATLEAST_ONE"


# -- starting ---------------------------------------------------------------------------------------
def start_workflow(state: WorkflowState) -> None:
    state.set_workflow_status(S.EXECUTING, reason="submitted")
    root = state.get(state.workflow.root_node_id)
    if root is None:
        complete_workflow(state, S.COMPLETED)
        return
    start(state, root)


def start(state: WorkflowState, node: Node) -> None:
    """The chain has reached ``node``: start it according to its kind."""
    if node.status in TERMINAL:
        # Already finished (a retry walking through work done before): pass through it.
        advance(state, node)
        return
    if node.status in ACTIVE:
        return
    kind = node.kind
    if kind in (NodeKind.PROCESS, NodeKind.PARALLEL):
        state.set_status(node, S.EXECUTING, reason="started")
        if kind == NodeKind.PROCESS:
            timing.process_started(state, node)
        heads = [c for c in (state.get(i) for i in node.child_ids) if c is not None]
        if not heads:
            finish(state, node, S.COMPLETED, reason="empty")
            return
        for head in heads:
            start(state, head)
            if not state.active:
                return
    elif kind in WORKER_KINDS:
        submit_to_worker(state, node, reason="submitted")
    elif kind == NodeKind.LISTENER:
        # Waits for a correlated message; waiting costs no worker.
        state.set_status(node, S.EXECUTING, reason="waiting")
        correlation.listener_started(state, node)
    elif kind in (NodeKind.TRIGGER, NodeKind.INTERVAL, NodeKind.MONITOR):
        timing.start_timed(state, node)
    else:  # pragma: no cover - kinds are a closed set
        raise TaskInvalidState(f"{node.name}: unknown kind {kind!r}")


def submit_to_worker(
    state: WorkflowState, node: Node, *, reason: str, detail: dict[str, Any] | None = None
) -> None:
    state.set_status(node, S.SUBMITTED, reason=reason, detail=detail)
    state.to_dispatch.append(node.id)


# -- finishing --------------------------------------------------------------------------------------
def finish(
    state: WorkflowState,
    node: Node,
    status: str,
    *,
    reason: str,
    error: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """``node`` ends with ``status``; walk on (or halt the workflow on a failure)."""
    state.set_status(node, status, reason=reason, error=error, detail=detail)
    if node.kind == NodeKind.MONITOR:
        return  # engine-created, outside the graph: nothing follows a monitor, it never halts
    if status == S.FAILURE and state.workflow.failure_policy != "continue":
        if in_atleast_one_group(state, node):
            # One branch has failed; the group decides once its other branches have ended.
            notify_parent(state, node)
            return
        halt(state, node, error or "failed")
        return
    advance(state, node)


def in_atleast_one_group(state: WorkflowState, node: Node) -> bool:
    """Whether ``node`` is inside a running ATLEAST_ONE group (at any depth)."""
    parent = state.get(node.parent_id)
    while parent is not None:
        if (
            parent.kind == NodeKind.PARALLEL
            and parent.config.get("operator") == ATLEAST_ONE
            and parent.status not in TERMINAL
        ):
            return True
        parent = state.get(parent.parent_id)
    return False


def halt(state: WorkflowState, node: Node, error: str) -> None:
    """failure_policy "halt": the failed node's containers and the workflow end FAILURE.

    Other branches already running are left alone: what they finish is recorded, and the walk
    past them resumes when the workflow is retried.
    """
    parent = state.get(node.parent_id)
    while parent is not None:
        if parent.status not in TERMINAL:
            state.set_status(parent, S.FAILURE, reason="child_failed")
        parent = state.get(parent.parent_id)
    if state.workflow.status == S.EXECUTING:
        state.set_workflow_status(S.FAILURE, reason="halted", error=f"{node.name}: {error}")


def advance(state: WorkflowState, node: Node) -> None:
    """Start the first successor of ``node`` that is not SKIPPED, or tell its parent it is done."""
    if not state.active:
        deferred = state.workflow.deferred_node_ids
        if str(node.id) not in deferred and state.workflow.status == S.FAILURE:
            state.workflow.deferred_node_ids = [*deferred, str(node.id)]
            state.touch_workflow("deferred_node_ids")
        return
    for successor in (state.get(i) for i in node.next_ids):
        if successor is not None and successor.status != S.SKIPPED:
            start(state, successor)
            return
    notify_parent(state, node)


def notify_parent(state: WorkflowState, node: Node) -> None:
    parent = state.get(node.parent_id)
    if parent is None:
        complete_workflow(state, node.status)
        return
    if parent.status in TERMINAL:
        return
    if parent.kind == NodeKind.PARALLEL:
        branch_finished(state, parent, node)
        return
    # A process ends with the status of its last task, as in the original.
    finish(state, parent, node.status, reason="last_task_finished")


def branch_finished(state: WorkflowState, group: Node, end: Node) -> None:
    """One branch of a parallel group has ended at ``end``; apply the group's operator."""
    head = branch_head(state, group, end)
    branches = dict(group.config.get("_branches", {}))
    branches[str(head)] = end.status
    group.config = {**group.config, "_branches": branches}
    state.touch(group)
    statuses = set(branches.values())
    operator = group.config.get("operator", JOIN_ALL)
    all_done = len(branches) >= len(group.child_ids)
    if operator == ATLEAST_ONE:
        if end.status != S.COMPLETED and not all_done:
            return
        stop_subtree(state, group, reason="sibling_finished_first")
    elif not all_done:
        return
    if S.COMPLETED in statuses and (operator == ATLEAST_ONE or S.FAILURE not in statuses):
        status = S.COMPLETED
    elif S.FAILURE in statuses:
        status = S.FAILURE
    else:
        status = S.SKIPPED
    finish(state, group, status, reason="operator_satisfied", detail={"operator": operator})


def branch_head(state: WorkflowState, group: Node, end: Node) -> uuid.UUID:
    heads = {str(i) for i in group.child_ids}
    previous: dict[str, Node] = {}
    for sibling in state.children(group.id):
        for nxt in sibling.next_ids:
            previous[str(nxt)] = sibling
    current = end
    seen: set[str] = set()
    while str(current.id) not in heads and str(current.id) in previous and str(current.id) not in seen:
        seen.add(str(current.id))
        current = previous[str(current.id)]
    return current.id


def complete_workflow(state: WorkflowState, status: str) -> None:
    if state.workflow.status != S.EXECUTING:
        return
    if status not in TERMINAL:
        status = S.COMPLETED
    state.set_workflow_status(status, reason="finished")
    state.cancel_timers_for.add(None)
    if dagger_settings.DELETE_WORKFLOW_ON_COMPLETE:
        state.delete_after = True


# -- decisions, stop, retry ---------------------------------------------------------------------------
def decide(state: WorkflowState, node: Node, chosen: Any) -> None:
    """Apply a decision: keep the chosen successor, skip every other branch, then walk on."""
    successors = [str(i) for i in node.next_ids]
    chosen_id = None if chosen is None else str(chosen)
    if chosen_id is not None and chosen_id not in successors:
        raise InvalidTaskResult(
            f"{node.name}: evaluate() returned {chosen!r}, which is not one of its successors {successors}"
        )
    keep = reachable(state, chosen_id) if chosen_id else set()
    for sid in successors:
        if sid != chosen_id:
            skip_branch(state, sid, keep=keep)
    finish(state, node, S.COMPLETED, reason="decided", detail={"chosen": chosen_id})


def reachable(state: WorkflowState, start_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [start_id]
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        node = state.get(nid)
        if node is not None:
            stack.extend(str(i) for i in node.next_ids)
    return seen


def skip_branch(state: WorkflowState, start_id: str, *, keep: set[str]) -> None:
    stack = [start_id]
    seen: set[str] = set()
    while stack:
        nid = stack.pop()
        if nid in seen or nid in keep:
            continue
        seen.add(nid)
        node = state.get(nid)
        if node is None:
            continue
        if node.status == S.NOT_STARTED:
            state.set_status(node, S.SKIPPED, reason="branch_not_chosen")
            for d in state.descendants(node):
                if d.status == S.NOT_STARTED:
                    state.set_status(d, S.SKIPPED, reason="branch_not_chosen")
        stack.extend(str(i) for i in node.next_ids)


def stop_subtree(state: WorkflowState, container: Node, *, reason: str) -> None:
    for node in state.descendants(container):
        stop_node(state, node, reason=reason)


def stop_node(state: WorkflowState, node: Node, *, reason: str) -> None:
    if node.status in TERMINAL:
        return
    # Tasks and processes that were running get their stop hook (spec 2.8); parallel groups do
    # not (their hook does nothing in the original), nor nodes that had not started.
    if node.status == S.EXECUTING and node.node_type in STOP_HOOK_TYPES:
        state.to_stop_hooks.append(node.id)
    state.set_status(node, S.STOPPED, reason=reason)
    state.cancel_timers_for.add(node.id)


def stop_workflow(state: WorkflowState, *, detail: dict[str, Any] | None = None) -> None:
    """Stop every unfinished node, then the workflow; ``detail`` goes into the workflow's STOPPED
    event (who stopped it and why, when a person did)."""
    wf = state.workflow
    if wf.status in ENDED_FOR_GOOD:
        raise TaskInvalidState(f"Workflow {wf.id} is {wf.status} and cannot be stopped.")
    for node in sorted(state.nodes.values(), key=lambda n: n.position):
        stop_node(state, node, reason="workflow_stopped")
    state.set_workflow_status(S.STOPPED, reason="stopped", detail=detail)
    state.cancel_timers_for.add(None)
    if dagger_settings.DELETE_WORKFLOW_ON_COMPLETE:
        state.delete_after = True


def inside_ended_container(state: WorkflowState, node: Node) -> bool:
    """Whether a container above ``node`` ended other than by failing (an ATLEAST_ONE group that
    completed with another branch, a process skipped by its deadline, ...): what failed in there
    was already ridden out, and running it again would run a node inside a finished container."""
    parent = state.get(node.parent_id)
    while parent is not None:
        if parent.status in ENDED_FOR_GOOD:
            return True
        parent = state.get(parent.parent_id)
    return False


def retry_workflow(state: WorkflowState, *, detail: dict[str, Any] | None = None) -> list[Node]:
    """Resume a FAILURE workflow from its failed tasks. Returns the tasks started again.
    ``detail`` goes into the workflow's event (who retried it and why, when a person did)."""
    wf = state.workflow
    if wf.status != S.FAILURE:
        raise TaskInvalidState(f"Only a FAILURE workflow can be retried; {wf.id} is {wf.status}.")
    failed = [
        n
        for n in state.nodes.values()
        if n.status == S.FAILURE
        and n.node_type == NodeType.LEAF
        and n.kind != NodeKind.MONITOR
        and not inside_ended_container(state, n)
    ]
    if not failed:
        raise TaskInvalidState(f"Workflow {wf.id} has no failed task to retry.")
    state.set_workflow_status(S.EXECUTING, reason="retried", detail=detail)
    for leaf in failed:
        parent = state.get(leaf.parent_id)
        while parent is not None:
            if parent.status == S.FAILURE:
                state.set_status(parent, S.EXECUTING, reason="retried")
                if parent.kind == NodeKind.PROCESS:
                    timing.process_started(state, parent)  # a fresh max_run_duration deadline
            if parent.kind == NodeKind.PARALLEL and parent.status == S.EXECUTING:
                # Failed branches run again: the group waits for their new outcome.
                branches = parent.config.get("_branches", {})
                kept = {head: status for head, status in branches.items() if status != S.FAILURE}
                if kept != branches:
                    parent.config = {**parent.config, "_branches": kept}
                    state.touch(parent)
            parent = state.get(parent.parent_id)
    for leaf in sorted(failed, key=lambda n: n.position):
        # Attempts keep counting (idempotency keys never repeat); the retry budget starts anew.
        leaf.config = {**leaf.config, "retry_base": leaf.attempts}
        leaf.error = ""
        if leaf.kind in WORKER_KINDS or leaf.kind in (NodeKind.TRIGGER, NodeKind.INTERVAL):
            submit_to_worker(state, leaf, reason="retried")
        else:
            state.set_status(leaf, S.EXECUTING, reason="retried")
            if leaf.kind == NodeKind.LISTENER:
                correlation.listener_started(state, leaf)  # messages kept while it was halted
    deferred = list(wf.deferred_node_ids)
    wf.deferred_node_ids = []
    state.touch_workflow("deferred_node_ids")
    for nid in deferred:
        node = state.get(nid)
        if node is not None and state.active:
            advance(state, node)
    return failed
