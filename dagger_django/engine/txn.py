"""The door to a workflow's transaction: how every writer of workflow state gets in and out.

Whoever changes a workflow (the services, messages, recovery, the timer sweeps) goes through
here:

- :func:`locked` locks one workflow row, loads its nodes and yields its
  :class:`~dagger_django.engine.state.WorkflowState`; when the block ends without an error the
  transition is written and its sends are scheduled (:func:`commit`).
- :func:`locked_many` is the batch shape (``nodes_run``, the timer sweep): one transaction locks
  many workflows in id order and loads them in two statements; each workflow's step then runs
  on its own state (:func:`batch_step`: in a savepoint of its own once one has raised) and is
  settled with ``commit(state, deferred=True)``, and :func:`deferred_write` makes the writes of
  all of them with one statement per table.
- :func:`commit` writes a transition and, after the transaction commits, hands its work to
  workers (``Dispatcher.run_node``, stop hooks, timer countdowns) and announces it (signals,
  ``TASK_UPDATE_CALLBACKS``). Nothing sent after commit can undo what was committed.
- :func:`claim_node` marks a node EXECUTING for a worker and builds the :class:`Work` its hook
  needs outside the lock; :func:`set_parameters` changes the runtime parameters (history,
  business key, correlation). Both run inside a locked transition.

A change of a workflow's state is written through here; the few writes that need no workflow
lock (a stop hook's outcome, a dispatch recorded as owed) say so where they are made.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.db import InterfaceError, OperationalError, router, transaction

from .. import signals
from ..conf import dagger_settings
from ..definitions.enums import TaskStatus
from ..definitions.views import build_task, build_workflow_view
from ..exceptions import TaskClassNotFound, WorkflowDoesNotExist
from ..models import Node, NodeKind, Status, StopHook, Workflow
from . import correlation, logs, messages, outbox, parameters, ports, recovery, timing, walker
from .hooks import call_hook
from .state import Reuse, WorkflowState, flush_many, load_locked, load_locked_many

logger = logging.getLogger("dagger_django.engine")
S = Status


# ==================================================================================================
# in: locking
# ==================================================================================================
def workflow_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(getattr(value, "id", value)))
    except (ValueError, TypeError, AttributeError) as exc:
        raise WorkflowDoesNotExist(f"No workflow with id {value!r}.") from exc


@contextmanager
def locked(workflow_id: Any) -> Iterator[WorkflowState]:
    """Lock a workflow, load its nodes, yield the state; on success write it and schedule sends."""
    with transaction.atomic():
        state = lock(workflow_uuid(workflow_id))
        if state is None:
            raise WorkflowDoesNotExist(f"No workflow with id {workflow_id}.")
        yield state
        commit(state)


def lock(workflow_id: Any) -> WorkflowState | None:
    """Inside the caller's transaction: lock a workflow row and load its nodes (None when there
    is no such workflow). For a writer that may find nothing to do: it calls :func:`commit`
    only when it changed something (a commit always writes, e.g. the ``TASK_UPDATE_TOPIC``
    snapshot); :func:`locked` is the usual way."""
    wf, nodes = load_locked(workflow_id)
    return None if wf is None else WorkflowState(wf, nodes)


@contextmanager
def locked_many(
    workflow_ids: Iterable[Any], *, reuse: Reuse | None = None
) -> Iterator[dict[Any, tuple[Workflow, list[Node]]]]:
    """One transaction: lock the workflows (in id order, so two batches never deadlock) and load
    their nodes; yield ``{workflow id: (workflow, nodes)}`` (a workflow that does not exist is
    left out). Each step makes its own :class:`WorkflowState` of its row and settles it with
    :func:`commit`; with ``deferred=True`` the caller writes them all with :func:`deferred_write`
    before the block ends.

    ``reuse``: the batch's :class:`~dagger_django.engine.state.Reuse`. The workflows its last
    transaction wrote and nobody wrote since are taken from memory instead of loaded; the caller
    hands it what this one wrote (``reuse.keep(states)``), kept once the transaction commits. A
    transaction that does not commit, or is not the outermost one, keeps nothing."""
    if reuse is None:
        with transaction.atomic():
            yield lock_many(workflow_ids)
        return
    outermost = not transaction.get_connection(router.db_for_write(Workflow)).in_atomic_block
    try:
        with transaction.atomic():
            yield reuse.lock(workflow_ids)
    except BaseException:
        reuse.drop()
        raise
    if outermost:
        reuse.committed()
    else:
        reuse.drop()


def lock_many(workflow_ids: Iterable[Any]) -> dict[Any, tuple[Workflow, list[Node]]]:
    """Inside the caller's transaction: what :func:`locked_many` yields (for a batch that
    first picks its workflows in that transaction: the timer sweep's claim)."""
    return load_locked_many(workflow_ids)


class StepRaised(Exception):
    """A step of a batch attempt taken without savepoints raised (the cause is ``__cause__``,
    the step's ``key`` says which): the caller rolls the attempt back as a whole and takes it
    again with a savepoint per step (:func:`batch_step`)."""

    def __init__(self, key: Any = None) -> None:
        super().__init__(f"a batch step failed ({key!r})")
        self.key = key


@dataclass
class Step:
    """One step of a batch (:func:`batch_step`): ``error`` is what it raised, rolled back alone."""

    error: Exception | None = None


@contextmanager
def batch_step(*, savepoints: bool, key: Any = None) -> Iterator[Step]:
    """One workflow's step in a batch transaction (:func:`locked_many`, the timer sweep).

    A batch is first taken without savepoints (as a rule nothing raises, and a savepoint per
    workflow costs a quarter to a third of a batch's CPU): a step that raises ends that attempt
    with :class:`StepRaised`, and the caller rolls it back and takes the batch again with
    ``savepoints``. Then each step runs in a savepoint of its own; one that raises is rolled back
    alone, its exception kept on the yielded :class:`Step` (``step.error``: log it, leave the
    step out) and the block's remaining lines skipped. A lost connection
    (``OperationalError``, ``InterfaceError``) always ends the batch."""
    step = Step()
    try:
        with transaction.atomic() if savepoints else nullcontext():
            yield step
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        if not savepoints:
            raise StepRaised(key) from exc
        step.error = exc


# ==================================================================================================
# out: writing and announcing
# ==================================================================================================
def commit(state: WorkflowState, *, deferred: bool = False) -> None:
    """Write the transition and schedule its sends. ``deferred``: the writes are settled but left
    to the caller, which makes those of a whole batch at once (:func:`deferred_write`)."""
    timing.before_flush(state)
    correlation.before_flush(state)
    _stop_hooks_record(state)
    if deferred:
        state.flush(write=False)
    else:
        deferred_write([state])
    outbox.after_flush(state)  # task_update_topic (engine/outbox.py)
    # robust: whatever an after-commit callback raises, the request that committed succeeds.
    transaction.on_commit(partial(_after_commit, state), robust=True)


def deferred_write(states: list[WorkflowState]) -> None:
    """Write the transitions of ``states`` (one or a batch's): one statement per table (per shape
    of delivery write, per set of workflow fields) for all of them. Raises
    :class:`messages.StaleDeliveries` when a delivery was taken over meanwhile: the caller rolls
    back. The deliveries and subscriptions go first: a workflow deleted on completion
    (``DELETE_WORKFLOW_ON_COMPLETE``) takes them along."""
    messages.deliveries_write(states)
    correlation.subscriptions_write(states)
    flush_many(states)


def batch_write(states: list[WorkflowState]) -> None:
    """:func:`deferred_write` for a batch attempt taken without savepoints (a ``run_nodes``
    batch's claim or apply, a timer sweep's batch). If the writes fail (a delivery was taken
    over, a value the database refuses), raises :class:`StepRaised` (no key): the caller rolls
    the attempt back as a whole and does it again with a savepoint per workflow, where each writes
    its own and a failure leaves out that workflow alone. A database outage raises as it is."""
    try:
        deferred_write(states)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        logger.info("a batch's writes failed (%r); again with a savepoint per workflow", exc)
        raise StepRaised from exc


def _stop_hooks_record(state: WorkflowState) -> None:
    """The ``stop`` hooks this transition owes are written on their nodes, in the same statement
    as the status change (the nodes are being written anyway): a lost message cannot lose them."""
    for node_id in state.to_stop_hooks:
        node = state.get(node_id)
        if node is not None:
            node.stop_hook = StopHook.PENDING
            node.stop_hook_at = None
            state.touch(node)


def _after_commit(state: WorkflowState) -> None:
    """Hand work to workers, then announce. Nothing here can undo what was committed.

    A dispatch that fails (the broker is down: the dispatcher has already retried briefly) is
    logged and recorded as owed on its nodes (:func:`recovery.dispatch_owed`); the next recovery
    sweep sends it. The first failure ends this commit's sends, so a request waits for at most one
    failed publish. Signals and callbacks are announced whatever happened to the sends. Last, the
    commit observers (:func:`ports.observers`: metrics, traces) see the transition; they count
    only what was committed, since a rolled-back transaction runs no ``on_commit`` callback.
    """
    try:
        _dispatch_after_commit(state)
    except Exception:  # noqa: BLE001 - the transition is committed; recovery covers the rest
        logger.exception(
            "after-commit dispatch of workflow %s (business key %r) failed",
            state.workflow.id,
            state.workflow.business_key,
            extra=logs.extra(state.workflow.id, state.workflow.business_key),
        )
    _announce(state)
    for observer in ports.observers():
        try:
            observer(state)
        except Exception:  # noqa: BLE001 - metrics and traces never fail what was committed
            logger.exception("commit observer %r failed for workflow %s", observer, state.workflow.id)


def _dispatch_after_commit(state: WorkflowState) -> None:
    dispatcher = ports.get_dispatcher()
    wf = state.workflow
    pending = list(state.to_dispatch)
    hooks = list(state.to_stop_hooks)
    try:
        # One message per node: the branches of a parallel group run on as many workers as are free.
        while pending:
            dispatcher.run_node(workflow_id=wf.id, node_id=pending[0])
            pending.pop(0)
        if hooks:
            dispatcher.run_stop_hooks(workflow_id=wf.id, node_ids=hooks)
            hooks = []
    except Exception as exc:  # noqa: BLE001 - owed, not lost
        logger.error(
            "could not dispatch %d node(s) and %d stop hook(s) of workflow %s (business key %r) (%s: %s); "
            "the next recovery sweep sends them",
            len(pending),
            len(hooks),
            wf.id,
            wf.business_key,
            type(exc).__name__,
            exc,
            extra=logs.extra(wf.id, wf.business_key),
        )
        recovery.dispatch_owed(targets=[(wf.id, node_id) for node_id in [*pending, *hooks]])
        return  # the broker is down: the timers below are the sweep's (the table is the truth)
    try:
        for timer in state.timers:
            if timer.pk is not None:
                dispatcher.fire_timer(timer_id=timer.pk, eta=timer.due_at)
    except Exception as exc:  # noqa: BLE001 - a countdown is precision only
        logger.warning(
            "could not send a timer countdown of workflow %s (business key %r) (%r); the sweep fires it",
            wf.id,
            wf.business_key,
            exc,
            extra=logs.extra(wf.id, wf.business_key),
        )


def _announce(state: WorkflowState) -> None:
    wf = state.workflow
    for node, frm, to in state.changes:
        if node is None:
            _send(signals.workflow_status_changed, workflow=wf, from_status=frm, to_status=to)
            specific = {
                S.COMPLETED: signals.workflow_completed,
                S.FAILURE: signals.workflow_failed,
                S.STOPPED: signals.workflow_stopped,
            }.get(to)
        else:
            _send(signals.task_status_changed, workflow=wf, node=node, from_status=frm, to_status=to)
            specific = {S.COMPLETED: signals.task_completed, S.FAILURE: signals.task_failed}.get(to)
        if specific is not None:
            _send(specific, workflow=wf, node=node, from_status=frm, to_status=to)
    callbacks = dagger_settings.callbacks()
    if callbacks and (state.changes or state.parameters_changed):
        view = build_workflow_view(wf, list(state.nodes.values()), strict=False)
        for callback in callbacks:
            try:
                call_hook(callback, view)
            except Exception:
                logger.exception("task update callback %r failed for workflow %s", callback, wf.id)


def _send(signal: Any, **kwargs: Any) -> None:
    if not signal.has_listeners():
        return
    for receiver, result in signal.send_robust(sender=Workflow, **kwargs):
        if isinstance(result, Exception):
            logger.error("signal receiver %r failed", receiver, exc_info=result)


# ==================================================================================================
# changes every writer makes: parameters, claims
# ==================================================================================================
def set_parameters(
    state: WorkflowState,
    merged: dict[str, Any],
    *,
    changed: list[str],
    removed: list[str],
    node: Node | None,
    operator: dict[str, Any] | None = None,
) -> None:
    """Set the workflow's runtime parameters to ``merged`` (validated by the caller): the
    business key follows its lookup key, the history records what changed (on ``node`` if a
    hook changed them; with ``operator``, who changed them and why, when a person did) and the
    correlation keys are updated."""
    wf = state.workflow
    wf.runtime_parameters = merged
    fields = ["runtime_parameters"]
    if wf.partition_key_lookup and (wf.partition_key_lookup in changed or wf.partition_key_lookup in removed):
        wf.business_key = parameters.business_key(merged.get(wf.partition_key_lookup))
        fields.append("business_key")
    state.touch_workflow(*fields)
    state.parameters_changed = True
    detail = {"changed": changed, "removed": removed, **(operator or {})}
    state.record(reason="parameters_changed", detail=detail, node=node)
    correlation.parameters_changed(state, changed=changed, removed=removed)


@dataclass
class Work:
    """A node claimed by a worker: everything needed to run its hook with no lock held."""

    workflow_id: uuid.UUID
    node_id: uuid.UUID
    name: str
    kind: str
    attempt: int
    task: Any
    view: Any
    params: dict[str, Any]
    params_json: str
    #: A listener's message to hand to ``on_message`` (engine/messages.py).
    delivery: Any = None
    #: The workflow and its nodes as claimed (read-only): where ``checkpoint="process"`` finds
    #: the next step to run before anything is committed (``services._chained``).
    workflow: Any = None
    nodes: dict[uuid.UUID, Node] | None = None


@dataclass
class Outcome:
    """What running a claimed node's hook gave, applied in the next transaction."""

    value: Any = None
    status: str = S.COMPLETED
    error: BaseException | None = None
    error_text: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    #: Messages the hook sent with ``Topic.send``, written when its result is applied.
    sends: list[Any] = field(default_factory=list)


def claim_node(
    state: WorkflowState, node: Node, lease: str, *, build: bool = True, task: Any = None
) -> Work | None:
    """Mark ``node`` EXECUTING for this worker; None if its class cannot be loaded (it FAILS).

    ``build=False``: the Work carries no view and no parameters (the caller has them). ``task``:
    the node's task object, when the caller built it already."""
    if node.kind == NodeKind.LISTENER:  # its next message (engine/messages.py)
        return messages.delivery_claim(state, node, lease)
    if task is None:
        try:
            task = build_task(node, strict=True)
        except TaskClassNotFound as exc:
            walker.finish(state, node, S.FAILURE, reason="class_not_found", error=str(exc))
            return None
    node.attempts += 1
    node.lease = lease
    if node.status == S.EXECUTING:
        state.touch(node)
        state.record(reason="reclaimed", detail={"lease": lease}, node=node)
    else:
        state.set_status(node, S.EXECUTING, reason="claimed")
    _refresh_task(task, node)
    if not build:
        return Work(
            state.workflow.id,
            node.id,
            node.name,
            node.kind,
            node.attempts,
            task,
            None,
            {},
            "",
            workflow=state.workflow,
        )
    return work_build(state, node, task, attempt=node.attempts)


def work_build(state: WorkflowState, node: Node, task: Any, *, attempt: int, delivery: Any = None) -> Work:
    """What a claimed node's hook needs outside the lock: a private copy of the runtime
    parameters and the workflow as user code sees it (holding that same copy). A listener's
    message (``delivery``) gets no workflow view: ``on_message`` is handed the parameters and the
    payload only, and building the view was a fifth of a delivery's CPU."""
    return work_for(
        state.workflow,
        state.nodes,
        node,
        task,
        attempt=attempt,
        params_json=parameters.dumps(state.workflow.runtime_parameters),
        delivery=delivery,
    )


def work_for(
    workflow: Any,
    nodes: dict[uuid.UUID, Node],
    node: Node,
    task: Any,
    *,
    attempt: int,
    params_json: str,
    delivery: Any = None,
) -> Work:
    """The :class:`Work` of ``node`` of ``workflow`` (whose nodes are ``nodes``), its hook seeing
    the runtime parameters encoded as ``params_json``: those of the locked row
    (:func:`work_build`), or those a previous step of a ``checkpoint="process"`` chain left
    (``services._chained``)."""
    params = json.loads(params_json)
    view = None
    if delivery is None:
        # Its task objects are built when first used, from the nodes as they are now.
        view = build_workflow_view(workflow, list(nodes.values()), strict=False)
        view.runtime_parameters = params
    return Work(
        workflow_id=workflow.id,
        node_id=node.id,
        name=node.name,
        kind=node.kind,
        attempt=attempt,
        task=task,
        view=view,
        params=params,
        params_json=params_json,
        delivery=delivery,
        workflow=workflow,
        nodes=nodes,
    )


def _refresh_task(task: Any, node: Node) -> None:
    task.status = TaskStatus.of(node.status)
    task.attempt = node.attempts
    task.idempotency_key = f"{node.id}:{node.attempts}"
