"""The engine's services: every way a workflow changes, each in one transaction.

Each service locks the workflow row first (``SELECT ... FOR UPDATE``), loads the workflow's nodes,
lets the walker change them in memory and writes them back with a fixed number of statements.
Celery messages, signals and callbacks go out only after commit. User code never runs while the
lock is held: :func:`node_run` claims a node in one transaction, runs the hook with no transaction
open, and applies the result in the next one, where it may directly claim the workflow's next
step so that a chain of executors costs one Celery message rather than one per step.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.db import IntegrityError, transaction

from .. import signals
from ..conf import dagger_settings
from ..definitions.enums import TaskStatus
from ..definitions.views import build_task, build_workflow_view
from ..exceptions import (
    DaggerError,
    InvalidRuntimeParameters,
    InvalidTaskResult,
    TaskClassNotFound,
    TaskInvalidState,
    WorkflowDoesNotExist,
)
from ..models import Node, NodeKind, Status, Timer, TimerPurpose, TimerStatus, Workflow, WorkflowTemplate
from . import correlation, parameters, ports, timing, walker
from .hooks import call_hook
from .state import WorkflowState, load_locked

logger = logging.getLogger("dagger_django.engine")
S = Status


# ==================================================================================================
# transactions
# ==================================================================================================
def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(getattr(value, "id", value)))
    except (ValueError, TypeError, AttributeError) as exc:
        raise WorkflowDoesNotExist(f"No workflow with id {value!r}.") from exc


def _lock(workflow_id: Any) -> Workflow:
    try:
        return Workflow.objects.select_for_update().get(pk=_uuid(workflow_id))
    except Workflow.DoesNotExist as exc:
        raise WorkflowDoesNotExist(f"No workflow with id {workflow_id}.") from exc


@contextmanager
def locked(workflow_id: Any) -> Iterator[WorkflowState]:
    """Lock a workflow, load its nodes, yield the state; on success write it and schedule sends."""
    with transaction.atomic():
        wf, nodes = load_locked(_uuid(workflow_id))
        if wf is None:
            raise WorkflowDoesNotExist(f"No workflow with id {workflow_id}.")
        state = WorkflowState(wf, nodes)
        yield state
        _commit(state)


def _commit(state: WorkflowState) -> None:
    timing.before_flush(state)
    correlation.before_flush(state)
    state.flush()
    transaction.on_commit(partial(_after_commit, state))


def _after_commit(state: WorkflowState) -> None:
    """Hand work to workers, then announce. Nothing here can undo what was committed."""
    dispatcher = ports.get_dispatcher()
    wf = state.workflow
    for node_id in state.to_dispatch:
        dispatcher.run_node(workflow_id=wf.id, node_id=node_id)
    for timer in state.timers:
        if timer.pk is not None:
            dispatcher.fire_timer(timer_id=timer.pk, eta=timer.due_at)
    if state.to_stop_hooks:
        dispatcher.run_stop_hooks(workflow_id=wf.id, node_ids=list(state.to_stop_hooks))
    _announce(state)


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
# templates and creation
# ==================================================================================================
def template_version(template: Any) -> WorkflowTemplate:
    """The stored version of ``template``'s current graph, created if this digest is new."""
    graph = template.to_graph()
    digest = template.digest()
    row = WorkflowTemplate.objects.filter(name=template.name, digest=digest).first()
    attempts = 0
    while row is None:
        attempts += 1
        last = (
            WorkflowTemplate.objects.filter(name=template.name)
            .order_by("-version")
            .values_list("version", flat=True)
            .first()
        )
        try:
            with transaction.atomic():
                row = WorkflowTemplate.objects.create(
                    name=template.name, version=(last or 0) + 1, digest=digest, graph=graph
                )
        except IntegrityError:
            if attempts >= 5:
                raise
            row = WorkflowTemplate.objects.filter(name=template.name, digest=digest).first()
    return row


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def workflow_create(
    *,
    template: Any,
    workflow_id: Any = None,
    partition_key_lookup: str | None = None,
    runtime_parameters: dict[str, Any] | None = None,
    submit: bool = False,
    seed: Any = None,
    dynamic_process_builders: dict[str, Any] | None = None,
    parallel_process_templates: dict[str, Any] | None = None,
) -> Workflow:
    """Create a workflow from ``template`` (all its nodes in one insert) and optionally start it.

    Everything is validated before anything is written: bad parameters, a bad template or a
    missing trigger time raise a :class:`DaggerError` and store nothing.
    """
    from ..definitions.graph import materialize

    params = {} if runtime_parameters is None else runtime_parameters
    parameters.validate(params)
    from ..definitions.ids import new_id

    wid = _uuid(workflow_id) if workflow_id is not None else new_id()
    materialized = materialize(
        template,
        workflow_id=wid,
        runtime_parameters=params,
        seed=seed,
        dynamic_process_builders=dynamic_process_builders,
        parallel_process_templates=parallel_process_templates,
    )
    now = ports.now()
    business_value = params.get(partition_key_lookup) if partition_key_lookup else None
    try:
        with transaction.atomic():
            version = template_version(template)
            wf = Workflow(
                id=wid,
                template=version,
                template_name=template.name,
                template_class=_class_path(template.template_type),
                failure_policy=getattr(template, "failure_policy", "halt") or "halt",
                status=S.NOT_STARTED,
                runtime_parameters=params,
                partition_key_lookup=partition_key_lookup,
                business_key=parameters.business_key(business_value),
                root_node_id=materialized.root_ids[0] if materialized.root_ids else None,
                time_created=now,
                updated_at=now,
            )
            nodes = [
                Node(
                    id=spec.id,
                    workflow_id=wid,
                    parent_id=spec.parent_id,
                    name=spec.name[:500],
                    node_type=spec.node_type,
                    kind=spec.kind,
                    task_class=spec.task_class,
                    position=spec.position,
                    next_ids=[str(i) for i in spec.next_ids],
                    child_ids=[str(i) for i in spec.child_ids],
                    config=spec.config,
                    time_created=now,
                    updated_at=now,
                )
                for spec in materialized.nodes
            ]
            state = WorkflowState(wf, nodes, is_new=True)
            state.record(reason="created", detail={"template": template.name, "version": version.version})
            if submit:
                walker.start_workflow(state)
            _commit(state)
            wf._dagger_nodes = nodes  # type: ignore[attr-defined]  # for instance_create
    except IntegrityError as exc:
        if Workflow.objects.filter(pk=wid).exists():
            raise TaskInvalidState(f"A workflow with id {wid} already exists.") from exc
        raise
    return wf


def workflow_submit(*, workflow_id: Any) -> Workflow:
    """Start a created workflow. Submitting a running one again is a harmless no-op."""
    with locked(workflow_id) as state:
        wf = state.workflow
        if wf.status in (S.NOT_STARTED, S.SUBMITTED):
            walker.start_workflow(state)
        elif wf.status != S.EXECUTING:
            raise TaskInvalidState(
                f"Workflow {wf.id} is {wf.status}; only a NOT_STARTED workflow can be submitted"
                + (" (use retry for a FAILURE one)." if wf.status == S.FAILURE else ".")
            )
    return state.workflow


def workflow_get(*, workflow_id: Any) -> Workflow:
    try:
        return Workflow.objects.get(pk=_uuid(workflow_id))
    except Workflow.DoesNotExist as exc:
        raise WorkflowDoesNotExist(f"No workflow with id {workflow_id}.") from exc


def instance_create(**kwargs: Any) -> Any:
    """:func:`workflow_create`, returning the workflow as the original's instance object."""
    wf = workflow_create(**kwargs)
    return _as_instance(wf, getattr(wf, "_dagger_nodes", None))


def workflow_instance(*, workflow_id: Any) -> Any:
    """The workflow as the original's instance object (``template_type``), for user code."""
    return _as_instance(workflow_get(workflow_id=workflow_id), None)


def _as_instance(wf: Workflow, nodes: list[Node] | None) -> Any:
    if nodes is None:
        nodes = list(Node.objects.filter(workflow_id=wf.id))
    view = build_workflow_view(wf, nodes, strict=False)
    view.model = wf
    return view


def workflow_stop(*, workflow_id: Any) -> Workflow:
    """Stop a workflow: every unfinished node STOPPED, their ``stop`` hooks run after commit."""
    with locked(workflow_id) as state:
        walker.stop_workflow(state)
    return state.workflow


def workflow_retry(*, workflow_id: Any) -> Workflow:
    """Resume a FAILURE workflow from the task(s) that failed."""
    with locked(workflow_id) as state:
        walker.retry_workflow(state)
    return state.workflow


def workflow_update_parameters(*, workflow_id: Any, changes: Any) -> Workflow:
    """Merge ``changes`` into the workflow's runtime parameters (keys given replace, others stay)."""
    parameters.validate(changes, what="runtime parameter changes")
    with locked(workflow_id) as state:
        wf = state.workflow
        if wf.status in (S.COMPLETED, S.STOPPED, S.SKIPPED):
            raise TaskInvalidState(
                f"Workflow {wf.id} is {wf.status}; its runtime parameters can no longer change."
            )
        merged = parameters.merge(wf.runtime_parameters, changes, [])
        parameters.validate(merged)
        _set_parameters(state, merged, changed=sorted(changes), removed=[], node=None)
    return state.workflow


def _set_parameters(
    state: WorkflowState, merged: dict[str, Any], *, changed: list[str], removed: list[str], node: Node | None
) -> None:
    wf = state.workflow
    wf.runtime_parameters = merged
    fields = ["runtime_parameters"]
    if wf.partition_key_lookup and (wf.partition_key_lookup in changed or wf.partition_key_lookup in removed):
        wf.business_key = parameters.business_key(merged.get(wf.partition_key_lookup))
        fields.append("business_key")
    state.touch_workflow(*fields)
    state.parameters_changed = True
    state.record(reason="parameters_changed", detail={"changed": changed, "removed": removed}, node=node)
    correlation.parameters_changed(state, changed=changed, removed=removed)


# ==================================================================================================
# running user code
# ==================================================================================================
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


@dataclass
class Outcome:
    value: Any = None
    status: str = S.COMPLETED
    error: BaseException | None = None
    error_text: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def node_run(*, workflow_id: Any, node_id: Any, lease: str) -> int:
    """Run a SUBMITTED node (and, inline, the workflow's next steps). Returns the steps run.

    Safe to call twice with the same message: a node that is no longer SUBMITTED is left alone,
    except that nodes this very message (``lease``) had claimed and not finished (the worker died)
    are run again with a new attempt number - never silently marked complete.
    """
    work = _claim(_uuid(workflow_id), _uuid(node_id), lease)
    steps = 0
    deadline = time.monotonic() + float(dagger_settings.INLINE_SECONDS)
    max_steps = int(dagger_settings.INLINE_STEPS)
    while work is not None:
        outcome = _execute(work)
        steps += 1
        inline = steps <= max_steps and time.monotonic() < deadline
        work = _apply(work, outcome, lease=lease, claim_next=inline)
    return steps


def _claim(workflow_id: uuid.UUID, node_id: uuid.UUID, lease: str) -> Work | None:
    try:
        with locked(workflow_id) as state:
            node = state.get(node_id)
            if node is None:
                return None
            if not (node.status == S.SUBMITTED or (node.status == S.EXECUTING and node.lease == lease)):
                node = next(
                    (
                        n
                        for n in state.nodes.values()
                        if n.status == S.EXECUTING and n.lease == lease and lease
                    ),
                    None,
                )
                if node is None:
                    logger.debug("node %s not claimable (redelivered or already taken)", node_id)
                    return None
            return _claim_node(state, node, lease)
    except WorkflowDoesNotExist:
        return None


def _claim_node(state: WorkflowState, node: Node, lease: str) -> Work | None:
    """Mark ``node`` EXECUTING for this worker; None if its class cannot be loaded (it FAILS)."""
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
    params_json = parameters.dumps(state.workflow.runtime_parameters)
    params = json.loads(params_json)
    _refresh_task(task, node)
    view = build_workflow_view(state.workflow, list(state.nodes.values()), strict=False)
    view.runtime_parameters = params
    return Work(
        workflow_id=state.workflow.id,
        node_id=node.id,
        name=node.name,
        kind=node.kind,
        attempt=node.attempts,
        task=task,
        view=view,
        params=params,
        params_json=params_json,
    )


def _refresh_task(task: Any, node: Node) -> None:
    task.status = TaskStatus.of(node.status)
    task.attempt = node.attempts
    task.idempotency_key = f"{node.id}:{node.attempts}"


def _execute(work: Work) -> Outcome:
    task = work.task
    try:
        if work.kind == NodeKind.DECISION:
            value = call_hook(task.evaluate, **dict(work.params))
        else:
            value = call_hook(task.execute, work.params, work.view)
    except Exception as exc:
        logger.warning("task %s (attempt %s) raised %r", work.name, work.attempt, exc)
        return Outcome(
            error=exc,
            error_text=f"{type(exc).__name__}: {exc}",
            details={"traceback": traceback.format_exc(limit=20)},
        )
    try:
        status = TaskStatus.of(task.status).code
    except Exception:  # noqa: BLE001 - a user set something that is not a status
        return Outcome(
            status=S.FAILURE,
            error=InvalidTaskResult(f"{work.name}: self.status was set to {task.status!r}"),
            error_text=f"InvalidTaskResult: self.status was set to {task.status!r}",
        )
    return Outcome(value=value, status=S.FAILURE if status == S.FAILURE else S.COMPLETED)


def _apply(work: Work, outcome: Outcome, *, lease: str, claim_next: bool) -> Work | None:
    try:
        with locked(work.workflow_id) as state:
            node = state.get(work.node_id)
            if (
                node is None
                or node.status != S.EXECUTING
                or node.lease != lease
                or node.attempts != work.attempt
            ):
                # Stopped, skipped or taken over while the hook ran: its result is not wanted.
                logger.info("discarding stale result of %s attempt %s", work.name, work.attempt)
                return None
            if outcome.error is not None:
                _fail_or_retry(state, node, outcome)
            else:
                _complete(state, node, work, outcome)
            if not (claim_next and state.to_dispatch):
                return None
            next_id = state.to_dispatch.pop(0)
            return _claim_node(state, state.node(next_id), lease)
    except WorkflowDoesNotExist:
        return None


def _complete(state: WorkflowState, node: Node, work: Work, outcome: Outcome) -> None:
    try:
        changed, removed = parameters.diff(work.params_json, work.params)
        if changed or removed:
            merged = parameters.merge(state.workflow.runtime_parameters, changed, removed)
            parameters.validate(merged)
            _set_parameters(state, merged, changed=sorted(changed), removed=removed, node=node)
        if node.kind == NodeKind.DECISION:
            walker.decide(state, node, outcome.value)
        elif outcome.status == S.FAILURE:
            walker.finish(
                state, node, S.FAILURE, reason="task_set_failure", error="the task set its status to FAILURE"
            )
        else:
            walker.finish(state, node, S.COMPLETED, reason="executed")
    except (InvalidRuntimeParameters, InvalidTaskResult) as exc:
        # Deterministic programming errors: retrying would give the same answer.
        walker.finish(state, node, S.FAILURE, reason="invalid_result", error=f"{type(exc).__name__}: {exc}")


def _fail_or_retry(state: WorkflowState, node: Node, outcome: Outcome) -> None:
    task_cls = type(build_task(node, strict=False))
    max_retries = int(getattr(task_cls, "max_retries", 0) or 0)
    retry_on = getattr(task_cls, "retry_on", (Exception,))
    error = outcome.error
    retryable = not isinstance(error, DaggerError) and isinstance(error, retry_on)
    used = node.attempts - int(node.config.get("retry_base", 0))
    if retryable and used <= max_retries:
        backoff = float(getattr(task_cls, "retry_backoff", 1.0))
        delay = min(
            backoff * (2 ** (node.attempts - 1)), float(getattr(task_cls, "retry_backoff_max", 300.0))
        )
        from .timing import add_timer

        due = state.now + dt.timedelta(seconds=delay)
        state.set_status(
            node,
            S.SUBMITTED,
            reason="retry_scheduled",
            error=outcome.error_text,
            detail={"error": outcome.error_text, "delay": delay, "attempt": node.attempts, **outcome.details},
        )
        add_timer(state, node, purpose=TimerPurpose.RETRY, due_at=due)
        return
    walker.finish(
        state,
        node,
        S.FAILURE,
        reason="raised",
        error=outcome.error_text,
        detail={"error": outcome.error_text, **outcome.details},
    )


# ==================================================================================================
# timers and stop hooks
# ==================================================================================================
def timer_fire(*, timer_id: int) -> bool:
    """Fire one timer if it is still pending; a second firing is a no-op. Returns whether it fired."""
    row = (
        Timer.objects.filter(pk=timer_id)
        .values("workflow_id", "node_id", "purpose", "due_at", "status")
        .first()
    )
    if row is None or row["status"] != TimerStatus.PENDING:
        return False
    if row["due_at"] > ports.now():
        # A broker's countdown can run a few milliseconds early: the table decides, so wait on.
        ports.get_dispatcher().fire_timer(timer_id=timer_id, eta=row["due_at"])
        return False
    try:
        with locked(row["workflow_id"]) as state:
            fired = Timer.objects.filter(pk=timer_id, status=TimerStatus.PENDING).update(
                status=TimerStatus.FIRED, fired_at=state.now
            )
            if not fired:
                return False
            node = state.get(row["node_id"])
            if node is not None:
                timing.fire(state, node, purpose=row["purpose"])
            return True
    except WorkflowDoesNotExist:
        return False


def stop_hooks_run(*, workflow_id: Any, node_ids: list[Any]) -> int:
    """Call the ``stop`` hook of nodes that were EXECUTING when stopped. Best effort, after commit."""
    try:
        wf = workflow_get(workflow_id=workflow_id)
    except WorkflowDoesNotExist:
        return 0
    nodes = list(Node.objects.filter(workflow_id=wf.id))
    view = build_workflow_view(wf, nodes, strict=False)
    by_id = {str(n.id): n for n in nodes}
    called = 0
    for nid in node_ids:
        node = by_id.get(str(nid))
        if node is None:
            continue
        try:
            task = build_task(node, strict=True)
            call_hook(task.stop, view.runtime_parameters, view)
            called += 1
        except Exception:
            logger.exception("stop hook of %s failed", node.name)
    return called
