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
import logging
import time
import traceback
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, OperationalError, transaction

from ..conf import dagger_settings
from ..definitions.enums import TaskStatus
from ..definitions.graph import materialize
from ..definitions.ids import new_id
from ..definitions.views import build_task, build_workflow_view
from ..exceptions import (
    InvalidRuntimeParameters,
    InvalidTaskResult,
    TaskInvalidState,
    WorkflowDoesNotExist,
)
from ..models import (
    Node,
    NodeKind,
    Status,
    StopHook,
    TimerPurpose,
    Workflow,
    WorkflowTemplate,
)
from ..models.status import ENDED_FOR_GOOD, HOOK_KINDS
from . import heartbeat, logs, messages, outbox, parameters, ports, recovery, timing, walker
from .hooks import call_hook
from .operations import operator_detail
from .outbox import outbox_send  # noqa: F401 - Topic.send's entry point (engine/outbox.py)
from .retry import RetryPolicy
from .state import Reuse, WorkflowState, node_copy, nodes_read
from .timers import (  # noqa: F401 - names of old; their home is engine/timers.py (docs/testing.md)
    timer_fire,
    timers_dispatch_upcoming,
    timers_fire_due,
)
from .txn import (
    Outcome,
    StepRaised,
    Work,
    batch_step,
    batch_write,
    claim_node,
    commit,
    lock,
    locked,
    locked_many,
    set_parameters,
    work_build,
    work_for,
    workflow_uuid,
)

logger = logging.getLogger("dagger_django.engine")
S = Status


# ==================================================================================================
# templates and creation
# ==================================================================================================
def template_graph(template: Any) -> tuple[dict[str, Any], str]:
    """``(graph, digest)`` of a template, computed once per template object.

    A registered template is not changed after registration (the seed's shape mutators only
    record a shape for the next creation), so the serialisation is cached on the object.
    """
    cached = getattr(template, "_dagger_graph", None)
    if cached is None:
        cached = (template.to_graph(), template.digest())
        try:
            template._dagger_graph = cached
        except AttributeError:  # pragma: no cover - a template class with __slots__
            pass
    return cached


#: (template name, digest) -> WorkflowTemplate row, per process. Used and filled only when the
#: caller is not inside a transaction of its own, which could roll the row back.
_VERSIONS: dict[tuple[str, str], WorkflowTemplate] = {}


def template_version(template: Any, *, cache: bool = False) -> WorkflowTemplate:
    """The stored version of ``template``'s current graph, created if this digest is new."""
    graph, digest = template_graph(template)
    key = (template.name, digest)
    row = _VERSIONS.get(key) if cache else None
    if row is not None:
        return row
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
    if cache:
        _VERSIONS[key] = row
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

    Everything is validated before anything is written: bad parameters (or parameters that do
    not match the template's declaration, or lack the ``partition_key_lookup`` one), a bad
    template or a missing trigger time raise a :class:`DaggerError` and store nothing.
    """
    params = {} if runtime_parameters is None else runtime_parameters
    parameters.validate(params)
    params = parameters.declared(template, params, partition_key_lookup=partition_key_lookup)
    wid = workflow_uuid(workflow_id) if workflow_id is not None else new_id()
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
    outer_transaction = transaction.get_connection().in_atomic_block
    version: WorkflowTemplate | None = None
    try:
        with transaction.atomic():
            version = template_version(template, cache=not outer_transaction)
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
            commit(state)
            wf._dagger_nodes = nodes  # type: ignore[attr-defined]  # for instance_create
    except IntegrityError as exc:
        if Workflow.objects.filter(pk=wid).exists():
            raise TaskInvalidState(f"A workflow with id {wid} already exists.") from exc
        if version is not None and _VERSIONS.pop((template.name, version.digest), None) is not None:
            # The cached template version row is gone (a database flushed under a running
            # process, as tests do): look it up again and create the workflow once more.
            return workflow_create(
                template=template,
                workflow_id=wid,
                partition_key_lookup=partition_key_lookup,
                runtime_parameters=runtime_parameters,
                submit=submit,
                seed=seed,
                dynamic_process_builders=dynamic_process_builders,
                parallel_process_templates=parallel_process_templates,
            )
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
    state.workflow._dagger_nodes = list(state.nodes.values())  # type: ignore[attr-defined]
    return state.workflow


def workflow_get(*, workflow_id: Any) -> Workflow:
    try:
        return Workflow.objects.get(pk=workflow_uuid(workflow_id))
    except Workflow.DoesNotExist as exc:
        raise WorkflowDoesNotExist(f"No workflow with id {workflow_id}.") from exc


def instance_create(**kwargs: Any) -> Any:
    """:func:`workflow_create`, returning the workflow as the original's instance object."""
    wf = workflow_create(**kwargs)
    return _as_instance(wf, getattr(wf, "_dagger_nodes", None))


def instance_submit(*, workflow_id: Any) -> Any:
    """:func:`workflow_submit`, returning the workflow as the instance object (no extra query)."""
    wf = workflow_submit(workflow_id=workflow_id)
    return _as_instance(wf, getattr(wf, "_dagger_nodes", None))


def instance_stop(*, workflow_id: Any) -> Any:
    """:func:`workflow_stop`, returning the workflow as the instance object (no extra query)."""
    wf = workflow_stop(workflow_id=workflow_id)
    return _as_instance(wf, getattr(wf, "_dagger_nodes", None))


def workflow_instance(*, workflow_id: Any) -> Any:
    """The workflow as the original's instance object (``template_type``), for user code."""
    return _as_instance(workflow_get(workflow_id=workflow_id), None)


def _as_instance(wf: Workflow, nodes: list[Node] | None) -> Any:
    if nodes is None:
        nodes = nodes_read(wf.id)
    view = build_workflow_view(wf, nodes, strict=False)
    view.model = wf
    return view


#: Who acted and why, as the history keeps it (the operations' rule, engine/operations.py).
_operator_detail = operator_detail


def workflow_stop(*, workflow_id: Any, actor: str | None = None, reason: str | None = None) -> Workflow:
    """Stop a workflow: every unfinished node STOPPED, their ``stop`` hooks run after commit.

    ``actor`` (who, e.g. a user name) and ``reason`` (why), when given, are recorded in the
    detail of the workflow's STOPPED event in its history."""
    with locked(workflow_id) as state:
        walker.stop_workflow(state, detail=_operator_detail(actor, reason))
    state.workflow._dagger_nodes = list(state.nodes.values())  # type: ignore[attr-defined]
    return state.workflow


def workflow_retry(*, workflow_id: Any, actor: str | None = None, reason: str | None = None) -> Workflow:
    """Resume a FAILURE workflow from the task(s) that failed. ``actor`` and ``reason``, when
    given, are recorded in the detail of the workflow's ``retried`` event in its history."""
    with locked(workflow_id) as state:
        walker.retry_workflow(state, detail=_operator_detail(actor, reason))
    return state.workflow


def workflow_update_parameters(
    *, workflow_id: Any, changes: Any, actor: str | None = None, reason: str | None = None
) -> Workflow:
    """Merge ``changes`` into the workflow's runtime parameters (keys given replace, others stay).

    The listeners that correlate on a changed parameter are re-keyed in the same transaction.
    ``actor`` and ``reason``, when given, are recorded in the ``parameters_changed`` event. A
    STOPPED workflow's parameters may change (fix them, then resume it); a COMPLETED or SKIPPED
    one's no longer."""
    parameters.validate(changes, what="runtime parameter changes")
    with locked(workflow_id) as state:
        wf = state.workflow
        if wf.status in ENDED_FOR_GOOD - {S.STOPPED}:
            raise TaskInvalidState(
                f"Workflow {wf.id} is {wf.status}; its runtime parameters can no longer change."
            )
        declared = WorkflowTemplate.objects.filter(pk=wf.template_id).values_list(
            "graph__parameters", flat=True
        )
        parameters.changes_declared(next(iter(declared), None), changes)
        merged = parameters.merge(wf.runtime_parameters, changes, [])
        parameters.validate(merged)
        set_parameters(
            state,
            merged,
            changed=sorted(changes),
            removed=[],
            node=None,
            operator=operator_detail(actor, reason),
        )
    return state.workflow


# ==================================================================================================
# running user code
# ==================================================================================================


def node_run(*, workflow_id: Any, node_id: Any, lease: str) -> int:
    """Run a SUBMITTED node (and, inline, the workflow's next steps). Returns the steps run.

    Safe to call twice with the same message: a node that is no longer SUBMITTED is left alone,
    except that nodes this very message (``lease``) had claimed and not finished (the worker died)
    are run again with a new attempt number - never silently marked complete.
    """
    work = _claim(workflow_uuid(workflow_id), workflow_uuid(node_id), lease)
    steps = 0
    deadline = time.monotonic() + float(dagger_settings.INLINE_SECONDS)
    max_steps = int(dagger_settings.INLINE_STEPS)
    while work is not None:
        chain = _execute_chain(work, lease, budget=max_steps + 1 - steps, deadline=deadline)
        steps += len(chain)
        inline = steps <= max_steps and time.monotonic() < deadline
        work = _apply_chain(chain, lease=lease, claim_next=inline)
    return steps


def _execute_chain(work: Work, lease: str, *, budget: int, deadline: float) -> list[tuple[Work, Outcome]]:
    """Run ``work``'s hook; under ``checkpoint="process"`` also the executor tasks that follow it
    in its process, before anything is committed (:func:`_chained`). Returns what to apply, in
    order. The claimed node's lease is kept fresh throughout: the chain runs under its claim."""
    chain: list[tuple[Work, Outcome]] = []
    beat = (
        heartbeat.beating(
            work.node_id, lease, workflow_id=work.workflow_id
        )  # the lease stays ours while it runs
        if work.delivery is None
        # on_message keeps its delivery's claim fresh (messages.deliveries_redispatch).
        else heartbeat.beating_delivery(work.delivery.id, lease)
    )
    with beat:
        current: Work | None = work
        while current is not None:
            with outbox.collecting() as sends:  # Topic.send inside the hook (engine/outbox.py)
                outcome = _execute(current)
            outcome.sends = sends
            chain.append((current, outcome))
            if len(chain) >= budget or time.monotonic() >= deadline:
                break
            current = _chained(current, outcome)
    return chain


def _chained(work: Work, outcome: Outcome) -> Work | None:
    """Under ``checkpoint="process"``: the next step to run before committing, or None.

    Only a plain chain qualifies: this executor succeeded, and its one successor is an executor
    of the same process that has not started. Everything else (decisions, groups, listeners,
    timers, failures, another process) ends the chain and is committed first. The next step sees
    the runtime parameters this one left, with its own attempt and idempotency key, as if the
    apply in between had been committed.
    """
    nodes = work.nodes
    if (
        nodes is None
        or work.delivery is not None
        or work.kind != NodeKind.EXECUTOR
        or outcome.error is not None
        or outcome.status != S.COMPLETED
    ):
        return None
    node = nodes.get(work.node_id)
    process = nodes.get(node.parent_id) if node is not None and node.parent_id else None
    if node is None or process is None or process.config.get("checkpoint") != "process":
        return None
    if len(node.next_ids) != 1:
        return None
    following = nodes.get(uuid.UUID(str(node.next_ids[0])))
    if (
        following is None
        or following.kind != NodeKind.EXECUTOR
        or following.parent_id != node.parent_id
        or following.status != S.NOT_STARTED
    ):
        return None
    try:
        params_json = parameters.dumps(work.params)
        task = build_task(following, strict=True)
    except Exception:  # noqa: BLE001 - the apply reports it: end the chain here
        return None
    attempt = following.attempts + 1
    # The claim-time snapshot, moved on as the committed chain will be, in copies: the nodes
    # themselves are the committed state, which the batch's next transaction may take from
    # memory (engine/state.py, Reuse).
    nodes = dict(nodes)
    node = nodes[node.id] = node_copy(node)
    following = nodes[following.id] = node_copy(following)
    node.status = S.COMPLETED
    following.status = S.EXECUTING
    task.status = TaskStatus.of(S.EXECUTING)
    task.attempt = attempt
    task.idempotency_key = f"{following.id}:{attempt}"
    return work_for(work.workflow, nodes, following, task, attempt=attempt, params_json=params_json)


def _apply_chain(chain: list[tuple[Work, Outcome]], *, lease: str, claim_next: bool) -> Work | None:
    first = chain[0][0]
    if len(chain) == 1:
        return _apply(first, chain[0][1], lease=lease, claim_next=claim_next)
    try:
        with locked(first.workflow_id) as state:
            return _apply_chain_in(state, chain, lease=lease, claim_next=claim_next)
    except WorkflowDoesNotExist:
        return None


def _apply_chain_in(
    state: WorkflowState, chain: list[tuple[Work, Outcome]], *, lease: str, claim_next: bool
) -> Work | None:
    """Apply a chain's results in order, in one transaction: each step is claimed (inline, as
    without a chain) and applied in turn, so the history records every step. If the workflow
    moved on meanwhile (stopped, retried), the step's guard discards it and what follows."""
    for position, (work, outcome) in enumerate(chain):
        last = position == len(chain) - 1
        following = _apply_in(
            state, work, outcome, lease=lease, claim_next=claim_next if last else True, build_next=last
        )
        if last:
            return following
        expected = chain[position + 1][0]
        if following is None or following.node_id != expected.node_id:
            logger.info(
                "the chain of %s of workflow %s (business key %r) stopped at %s: the workflow moved on",
                chain[0][0].name,
                work.workflow_id,
                state.workflow.business_key,
                work.name,
                extra=logs.extra(work.workflow_id, state.workflow.business_key, work.name),
            )
            return None if following is None else _rebuild(state, following)
    return None


def _rebuild(state: WorkflowState, claimed: Work) -> Work:
    """A step claimed without its view (:func:`_apply_in` with ``build_next=False``) made whole."""
    node = state.node(claimed.node_id)
    return work_build(state, node, claimed.task, attempt=node.attempts)


@dataclass
class BatchRun:
    """What :func:`nodes_run` did: hooks run, and when to come back for nodes still running
    under their lease elsewhere (0: none)."""

    steps: int = 0
    retry_in: float = 0.0


def nodes_run(*, targets: list[tuple[Any, Any]], lease: str) -> BatchRun:
    """Run the SUBMITTED nodes of many workflows (``[(workflow id, node id)]``), batched.

    The durable writes of the whole batch share transactions: one claims every node (the
    workflow rows locked in id order, then a savepoint per workflow, so that one workflow's
    failure rolls back only its own changes), the hooks run with no transaction open, one more
    applies every result and claims each workflow's next step inline, and so on while the inline
    budget lasts (``INLINE_STEPS``, ``INLINE_SECONDS``). A batch of K workflows commits K times
    less often than K single runs; what it cannot do together (a second node of a workflow already
    in the batch) runs alone afterwards. Each node's lease is ``<lease>:<position>``, as a
    redelivered message has the same positions: it re-runs exactly what was claimed and not
    applied. A node whose claim or apply raises is logged and left to recovery, as a single run's.
    """
    result = BatchRun()
    batch: list[tuple[uuid.UUID, uuid.UUID, str]] = []
    alone: list[tuple[uuid.UUID, uuid.UUID, str]] = []
    seen: set[uuid.UUID] = set()
    for position, (workflow_id, node_id) in enumerate(targets):
        try:
            item = (workflow_uuid(workflow_id), workflow_uuid(node_id), f"{lease}:{position}")
        except WorkflowDoesNotExist:
            logger.warning("run_nodes: ignoring a malformed target %r", (workflow_id, node_id))
            continue
        (alone if item[0] in seen else batch).append(item)
        seen.add(item[0])
    # Next steps that do not run inline go to workers DISPATCH_BATCH to a message.
    with ports.dispatch_in_batches(on_failure=recovery.dispatch_owed_targets):
        _run_batch(batch, alone, result)
    return result


def _run_batch(
    batch: list[tuple[uuid.UUID, uuid.UUID, str]],
    alone: list[tuple[uuid.UUID, uuid.UUID, str]],
    result: BatchRun,
) -> None:
    reuse = Reuse()  # what each transaction wrote, for the next one (engine/state.py)
    works = _claim_batch(batch, result, reuse=reuse)
    claimed_run(works, result, deadline=time.monotonic() + float(dagger_settings.INLINE_SECONDS), reuse=reuse)
    for workflow_id, node_id, item_lease in alone:
        try:
            result.steps += node_run(workflow_id=workflow_id, node_id=node_id, lease=item_lease)
        except LeaseHeld as held:
            result.retry_in = max(result.retry_in, held.retry_in)


def claimed_run(
    works: list[tuple[Work, str]], result: BatchRun, *, deadline: float, reuse: Reuse | None = None
) -> None:
    """Run the hooks of nodes claimed (and committed) under their leases, then apply their
    results in one transaction, claiming each workflow's next step inline and running it too,
    while the inline budget lasts (``INLINE_STEPS`` rounds, ``deadline``); what is left over is
    dispatched after each commit. Every claimed node's lease is kept fresh until it is applied
    (engine/heartbeat.py), so a worker that dies meanwhile leaves it to recovery. The claim may be
    :func:`nodes_run`'s or the timer sweep's (engine/timers.py: the transaction that fires a
    trigger claims it). Each transaction takes the workflows the previous one wrote from memory
    when nobody wrote them since (``reuse``, :class:`~dagger_django.engine.state.Reuse`)."""
    max_steps = int(dagger_settings.INLINE_STEPS)
    reuse = Reuse() if reuse is None else reuse
    rounds = 0
    while works:
        done: list[tuple[list[tuple[Work, Outcome]], str]] = []
        with ExitStack() as beats:  # every claimed node's lease stays ours until it is applied
            for work, work_lease in works:
                if work.delivery is None:
                    beats.enter_context(
                        heartbeat.beating(work.node_id, work_lease, workflow_id=work.workflow_id)
                    )
                else:
                    beats.enter_context(heartbeat.beating_delivery(work.delivery.id, work_lease))
            for work, work_lease in works:
                chain = _execute_chain(work, work_lease, budget=max_steps + 1 - rounds, deadline=deadline)
                done.append((chain, work_lease))
                result.steps += len(chain)
        rounds += max(len(chain) for chain, _ in done)
        inline = rounds <= max_steps and time.monotonic() < deadline
        works = _apply_batch(done, claim_next=inline, reuse=reuse)


def _claim_batch(
    items: list[tuple[uuid.UUID, uuid.UUID, str]], result: BatchRun, *, reuse: Reuse | None = None
) -> list[tuple[Work, str]]:
    """One transaction: lock every workflow of the batch and claim its node.

    The first attempt takes no savepoints (as a rule nothing raises, and a savepoint per workflow
    cost nearly a third of a batch's CPU). If a workflow's claim raises, that attempt is rolled
    back and the batch is claimed again with a savepoint per workflow, so that only the one that
    raised is left out. What the first attempt wrote is kept for the batch's next transaction
    (``reuse``); a rolled-back attempt keeps nothing, nor does the attempt with savepoints.
    """
    if not items:
        return []
    try:
        return _claim_batch_in(items, result, savepoints=False, reuse=reuse)
    except StepRaised:
        return _claim_batch_in(items, result, savepoints=True, reuse=reuse)


def _claim_batch_in(
    items: list[tuple[uuid.UUID, uuid.UUID, str]],
    result: BatchRun,
    *,
    savepoints: bool,
    reuse: Reuse | None = None,
) -> list[tuple[Work, str]]:
    with locked_many((workflow_id for workflow_id, _, _ in items), reuse=reuse) as loaded:
        with messages.deliveries_prefetched(_listener_ids(loaded, items)):
            return _claim_each(items, loaded, result, savepoints=savepoints, reuse=reuse)


def _listener_ids(
    loaded: dict[uuid.UUID, Any], items: list[tuple[uuid.UUID, uuid.UUID, str]]
) -> list[uuid.UUID]:
    """The listener nodes among a batch's targets (their deliveries are read for all at once)."""
    out = []
    for workflow_id, node_id, _ in items:
        row = loaded.get(workflow_id)
        if row is not None:
            node = next((n for n in row[1] if n.id == node_id), None)
            if node is not None and node.kind == NodeKind.LISTENER:
                out.append(node_id)
    return out


def _claim_each(
    items: list[tuple[uuid.UUID, uuid.UUID, str]],
    loaded: dict[uuid.UUID, Any],
    result: BatchRun,
    *,
    savepoints: bool,
    reuse: Reuse | None = None,
) -> list[tuple[Work, str]]:
    """Claim each target's node in its locked workflow (a savepoint each if ``savepoints``)."""
    works: list[tuple[Work, str]] = []
    states: list[WorkflowState] = []
    for workflow_id, node_id, lease in items:
        row = loaded.get(workflow_id)
        if row is None:
            continue
        with batch_step(savepoints=savepoints) as step:
            state = WorkflowState(*row)
            work = _claim_in(state, node_id, lease)
            commit(state, deferred=not savepoints)
        if isinstance(step.error, LeaseHeld):
            result.retry_in = max(result.retry_in, step.error.retry_in)
            continue
        if step.error is not None:
            key = row[0].business_key
            logger.error(
                "claiming node %s of workflow %s (business key %r) failed",
                node_id,
                workflow_id,
                key,
                exc_info=step.error,
                extra=logs.extra(workflow_id, key, str(node_id)),
            )
            continue
        states.append(state)
        if work is not None:
            works.append((work, lease))
    if not savepoints:
        batch_write(states)
        if reuse is not None:
            reuse.keep(states)
    return works


def _apply_batch(
    done: list[tuple[list[tuple[Work, Outcome]], str]], *, claim_next: bool, reuse: Reuse | None = None
) -> list[tuple[Work, str]]:
    """One transaction: apply every result, claiming next steps inline; first without
    savepoints, and if a workflow's apply raises, again with a savepoint each (:func:`_claim_batch`).

    A deadlock or serialization failure rolls the transaction back and it is applied again (at
    most ``_APPLY_ATTEMPTS`` times): the hooks have run, and letting the error reach the task
    would have the whole batch's hooks run again when Celery retries it."""
    for attempt in range(1, _APPLY_ATTEMPTS + 1):
        try:
            try:
                return _apply_batch_in(done, claim_next=claim_next, savepoints=False, reuse=reuse)
            except StepRaised:
                return _apply_batch_in(done, claim_next=claim_next, savepoints=True, reuse=reuse)
        except OperationalError as exc:
            if attempt == _APPLY_ATTEMPTS or not _conflict(exc):
                raise
            logger.info("applying a batch met %r; applying it again (attempt %s)", exc, attempt + 1)
    raise AssertionError("unreachable")  # pragma: no cover


#: How often a batch's apply is tried when it meets a deadlock or a serialization failure.
_APPLY_ATTEMPTS = 3


def _conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL ending a transaction to break a deadlock (40P01) or a
    serialization failure (40001): nothing is wrong with the work, only with its timing."""
    cause = exc.__cause__ or exc
    return getattr(cause, "sqlstate", None) in ("40P01", "40001")


def _apply_batch_in(
    done: list[tuple[list[tuple[Work, Outcome]], str]],
    *,
    claim_next: bool,
    savepoints: bool,
    reuse: Reuse | None = None,
) -> list[tuple[Work, str]]:
    works: list[tuple[Work, str]] = []
    states: list[WorkflowState] = []
    with locked_many((chain[0][0].workflow_id for chain, _ in done), reuse=reuse) as loaded:
        for chain, lease in done:
            work, outcome = chain[0]
            row = loaded.get(work.workflow_id)
            if row is None:
                continue
            with batch_step(savepoints=savepoints) as step:
                state = WorkflowState(*row)
                if len(chain) == 1:
                    following = _apply_in(state, work, outcome, lease=lease, claim_next=claim_next)
                else:
                    following = _apply_chain_in(state, chain, lease=lease, claim_next=claim_next)
                commit(state, deferred=not savepoints)
            if isinstance(step.error, messages.Stale):
                logger.info(
                    "discarding the stale result of %s of workflow %s (business key %r) for message %s",
                    work.name,
                    work.workflow_id,
                    logs.work_key(work),
                    work.delivery,
                    extra=logs.of_work(work),
                )
                continue
            if step.error is not None:
                logger.error(
                    "applying the result of %s of workflow %s (business key %r) attempt %s failed",
                    work.name,
                    work.workflow_id,
                    logs.work_key(work),
                    work.attempt,
                    exc_info=step.error,
                    extra=logs.of_work(work),
                )
                continue
            states.append(state)
            if following is not None:
                works.append((following, lease))
        if not savepoints:
            batch_write(states)
            if reuse is not None:
                reuse.keep(states)
    return works


def _claim(workflow_id: uuid.UUID, node_id: uuid.UUID, lease: str) -> Work | None:
    try:
        with locked(workflow_id) as state:
            return _claim_in(state, node_id, lease)
    except WorkflowDoesNotExist:
        return None


def _claim_in(state: WorkflowState, node_id: uuid.UUID, lease: str) -> Work | None:
    """Inside the workflow's transaction: claim ``node_id`` (or what this lease had claimed)."""
    node = state.get(node_id)
    if node is None:
        return None
    if node.kind == NodeKind.LISTENER:  # its next message (engine/messages.py)
        return messages.delivery_claim(state, node, lease)
    if not (node.status == S.SUBMITTED or (node.status == S.EXECUTING and node.lease == lease)):
        node = next(
            (n for n in state.nodes.values() if n.status == S.EXECUTING and n.lease == lease and lease),
            None,
        )
        if node is None:
            logger.debug(
                "node %s of workflow %s (business key %r) not claimable (redelivered or already taken)",
                node_id,
                state.workflow.id,
                state.workflow.business_key,
                extra=logs.extra(state.workflow.id, state.workflow.business_key, str(node_id)),
            )
            return None
    if node.status == S.EXECUTING:
        _lease_check(state, node)
    return claim_node(state, node, lease)


class LeaseHeld(Exception):
    """A redelivered message found its node still running: the lease's heartbeat is fresh.

    The first delivery's worker may be alive (a broker redelivers a long task's message after its
    visibility timeout) or may have just died (its message comes back at once). Nothing is run
    now; the caller tries again in ``retry_in`` seconds, by when a dead worker's heartbeat is stale.
    """

    def __init__(self, node_id: uuid.UUID, retry_in: float) -> None:
        super().__init__(f"node {node_id} is still running under this lease; try again in {retry_in:g}s")
        self.node_id = node_id
        self.retry_in = retry_in


def _lease_check(state: WorkflowState, node: Node) -> None:
    """Raise :class:`LeaseHeld` when ``node``'s lease was refreshed within the heartbeat window."""
    window = heartbeat.stale_after()
    age = (state.now - node.updated_at).total_seconds()
    if age < window:
        raise LeaseHeld(node.id, retry_in=window - age + heartbeat.interval())


def _execute(work: Work) -> Outcome:
    if work.delivery is not None:  # on_message (engine/messages.py)
        return messages.delivery_execute(work)
    task = work.task
    try:
        if work.kind == NodeKind.DECISION:
            value = call_hook(task.evaluate, **dict(work.params))
        elif work.kind in HOOK_KINDS:  # interval poll / monitor hook (engine/timing.py)
            value = timing.run_worker_hooks(work)
        else:
            value = call_hook(task.execute, work.params, work.view)
    except Exception as exc:
        logger.warning(
            "task %s of workflow %s (business key %r) (attempt %s) raised %r",
            work.name,
            work.workflow_id,
            logs.work_key(work),
            work.attempt,
            exc,
            extra=logs.of_work(work),
        )
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
    if work.delivery is not None:  # on_message's result (engine/messages.py)
        return messages.delivery_apply(work, outcome, lease=lease, claim_next=claim_next)
    try:
        with locked(work.workflow_id) as state:
            return _apply_in(state, work, outcome, lease=lease, claim_next=claim_next)
    except WorkflowDoesNotExist:
        return None


def _apply_in(
    state: WorkflowState,
    work: Work,
    outcome: Outcome,
    *,
    lease: str,
    claim_next: bool,
    build_next: bool = True,
) -> Work | None:
    """Inside the workflow's transaction: apply a hook's result; maybe claim the next step
    (without its view and parameters when ``build_next`` is false: a chain has them already)."""
    if work.delivery is not None:
        return messages.delivery_apply_in(state, work, outcome, lease=lease, claim_next=claim_next)
    node = state.get(work.node_id)
    if node is None or node.status != S.EXECUTING or node.lease != lease or node.attempts != work.attempt:
        # Stopped, skipped or taken over while the hook ran: its result is not wanted.
        logger.info(
            "discarding stale result of %s of workflow %s (business key %r) attempt %s",
            work.name,
            work.workflow_id,
            state.workflow.business_key,
            work.attempt,
            extra=logs.of_work(work),
        )
        return None
    if outcome.error is not None:
        _fail_or_retry(state, node, outcome)
    else:
        _complete(state, node, work, outcome)
    if not (claim_next and state.to_dispatch):
        return None
    next_id = state.to_dispatch.pop(0)
    return claim_node(state, state.node(next_id), lease, build=build_next)


def _complete(state: WorkflowState, node: Node, work: Work, outcome: Outcome) -> None:
    try:
        changed, removed = parameters.diff(work.params_json, work.params)
        if changed or removed:
            merged = parameters.merge(state.workflow.runtime_parameters, changed, removed)
            parameters.validate(merged)
            set_parameters(state, merged, changed=sorted(changed), removed=removed, node=node)
        outbox.stage(state, node, outcome.sends)  # commands sent by the hook (engine/outbox.py)
        if node.kind == NodeKind.DECISION:
            walker.decide(state, node, outcome.value)
        elif outcome.value is timing.POLL_AGAIN and outcome.status != S.FAILURE:
            timing.interval_wait(state, node)  # an interval task is not ready yet
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
    policy = RetryPolicy.for_task(type(build_task(node, strict=False)))
    used = node.attempts - int(node.config.get("retry_base", 0))
    delay = policy.retry_delay(outcome.error, used)
    if delay is not None:
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
# stop hooks
# ==================================================================================================
def stop_hooks_run(*, workflow_id: Any, node_ids: list[Any]) -> int:
    """Call the ``stop`` hook of nodes that were EXECUTING when stopped; returns how many ran.

    Each hook was recorded PENDING on its node in the stop's transaction; once called it is
    recorded DONE (or FAILED, with the error in the history), so a redelivered or re-sent message
    does not call it again. At least once: a worker that dies inside a hook leaves it PENDING and
    the recovery sweep sends it again. (A node listed with no record at all, from a message sent
    before hooks were recorded, is run and recorded too.)
    """
    try:
        wf = workflow_get(workflow_id=workflow_id)
    except WorkflowDoesNotExist:
        return 0
    wanted = {str(i) for i in node_ids}
    nodes = nodes_read(wf.id)
    due = [n for n in nodes if str(n.id) in wanted and n.stop_hook in (StopHook.PENDING, StopHook.NONE)]
    if not due:
        return 0
    view = build_workflow_view(wf, nodes, strict=False)
    called = 0
    for node in sorted(due, key=lambda n: n.position):
        error = ""
        try:
            task = build_task(node, strict=True)
            call_hook(task.stop, view.runtime_parameters, view)
            called += 1
        except Exception as exc:  # noqa: BLE001 - recorded on the node and in its history
            logger.exception(
                "stop hook of %s of workflow %s (business key %r) failed",
                node.name,
                wf.id,
                wf.business_key,
                extra=logs.extra(wf.id, wf.business_key, node.name),
            )
            # Storable whatever the exception said: a refused write would leave the hook owed.
            error = messages.clean_text(f"{type(exc).__name__}: {exc}", 4000)
        _stop_hook_done(node, error=error)
    return called


def _stop_hook_done(node: Node, *, error: str) -> None:
    """Record a hook's outcome on the node and in its history, in one transaction that locks the
    workflow; a hook already recorded (another copy of the message ran it) is left as it is."""
    outcome = StopHook.FAILED if error else StopHook.DONE
    with transaction.atomic():
        state = lock(node.workflow_id)
        current = None if state is None else state.get(node.id)
        if state is None or current is None or current.stop_hook not in (StopHook.PENDING, StopHook.NONE):
            return
        current.stop_hook = outcome
        current.stop_hook_at = state.now
        current.redispatch_at = None
        current.redispatches = 0
        state.mark(current)
        state.record(
            reason="stop_hook_failed" if error else "stop_hook_ran",
            detail={"error": error} if error else {},
            node=current,
        )
        state.flush()
