"""The state machine on the real database with an in-memory dispatcher (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.cost import counting
from dagger_django.engine import services
from dagger_django.exceptions import (
    InvalidRuntimeParameters,
    RuntimeParametersTooLarge,
    TaskInvalidState,
    WorkflowDoesNotExist,
)
from dagger_django.models import HistoryRecord, Status, Timer, Workflow, WorkflowTemplate
from tests.helpers import stored_nodes

from ..helpers import history
from . import builders as b
from . import tasks as t
from .conftest import reload, statuses

S = Status


def run(template: Any, dispatcher: Any, **params: Any) -> Workflow:
    wf = template.create_instance(submit_task=True, **params)
    dispatcher.drain()
    return reload(wf.id)


def fix_and_retry(wf: Workflow, dispatcher: Any) -> Workflow:
    """Let the ``Boom`` tasks pass from now on, retry the failed workflow, run it to its end."""
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    services.workflow_retry(workflow_id=wf.id)
    dispatcher.drain()
    return reload(wf.id)


# -- executors, processes, parameters ------------------------------------------------------------
def test_linear_executors_complete_in_order_with_one_worker_message(dispatcher: Any) -> None:
    tmpl = b.linear("Linear", (t.Record, "a"), (t.AsyncRecord, "b"), (t.Record, "c"))
    wf = run(tmpl, dispatcher)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["a_executor_task", "b_executor_task", "c_executor_task"]
    assert set(statuses(wf.id).values()) == {S.COMPLETED}
    assert [kind for kind, _ in dispatcher.sent] == ["run_node"]


def test_processes_run_one_after_the_other(dispatcher: Any) -> None:
    tmpl = b.template(
        "TwoProcesses",
        b.process("first", b.chain((t.Record, "one"))),
        b.process("second", b.chain((t.Record, "two"))),
    )
    wf = run(tmpl, dispatcher)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["one_executor_task", "two_executor_task"]
    s = statuses(wf.id)
    assert s["first"] == s["second"] == S.COMPLETED


def test_create_without_submit_stores_everything_and_runs_nothing(dispatcher: Any) -> None:
    tmpl = b.linear("NotSubmitted", (t.Record, "a"), (t.Record, "b"))
    wf = tmpl.create_instance(order_id="o1")
    assert reload(wf.id).status == S.NOT_STARTED
    assert set(statuses(wf.id).values()) == {S.NOT_STARTED}
    assert stored_nodes.filter(workflow_id=wf.id).count() == 3
    assert dispatcher.sent == []
    services.workflow_submit(workflow_id=wf.id)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_submit_again_is_a_noop_while_running_and_refused_when_finished(dispatcher: Any) -> None:
    tmpl = b.linear("Resubmit", (t.Record, "a"))
    wf = tmpl.create_instance(submit_task=True)
    services.workflow_submit(workflow_id=wf.id)
    dispatcher.drain()
    assert reload(wf.id).runtime_parameters["trace"] == ["a_executor_task"]
    with pytest.raises(TaskInvalidState):
        services.workflow_submit(workflow_id=wf.id)


def test_task_changes_to_runtime_parameters_reach_the_next_task(dispatcher: Any) -> None:
    tmpl = b.linear("Params", (t.SetFlag, "flag"), (t.Record, "after"))
    wf = run(tmpl, dispatcher, order_id="o-1")
    assert wf.runtime_parameters == {
        "order_id": "o-1",
        "flag_executor_task": True,
        "trace": ["after_executor_task"],
    }
    assert len(history(wf.id, "parameters_changed")) == 2


def test_business_key_is_the_partition_key_value(dispatcher: Any) -> None:
    tmpl = b.linear("Key", (t.Record, "a"))
    wf = tmpl.create_instance(partition_key_lookup="order_id", order_id="o-42")
    assert reload(wf.id).business_key == "o-42"


def test_history_records_every_transition_in_order(dispatcher: Any) -> None:
    tmpl = b.linear("History", (t.Record, "a"))
    wf = run(tmpl, dispatcher)
    events = [
        (e.node_name.rsplit(".", 1)[-1], e.from_status, e.to_status)
        for e in history(wf.id)
        if e.reason != "parameters_changed"
    ]
    assert ("", S.NOT_STARTED, S.EXECUTING) in events
    task_events = [e for e in events if e[0] == "a_executor_task"]
    assert task_events == [
        ("a_executor_task", S.NOT_STARTED, S.SUBMITTED),
        ("a_executor_task", S.SUBMITTED, S.EXECUTING),
        ("a_executor_task", S.EXECUTING, S.COMPLETED),
    ]
    assert events[-1] == ("", S.EXECUTING, S.COMPLETED)


def test_async_hooks_run_like_sync_ones(dispatcher: Any) -> None:
    tmpl = b.linear("Async", (t.AsyncRecord, "a"), (t.AsyncRecord, "b"))
    assert run(tmpl, dispatcher).runtime_parameters["trace"] == ["a_executor_task", "b_executor_task"]


# -- decisions -----------------------------------------------------------------------------------
def test_decision_runs_the_chosen_branch_and_skips_the_other(dispatcher: Any) -> None:
    wf = run(b.decision("Decide1"), dispatcher, branch=1)
    s = statuses(wf.id)
    assert wf.status == S.COMPLETED
    assert s["decide"] == S.COMPLETED
    assert s["right_executor_task"] == S.COMPLETED
    assert s["left_executor_task"] == S.SKIPPED
    assert s["left_after_executor_task"] == S.SKIPPED
    assert wf.runtime_parameters["trace"] == ["right_executor_task", "final_executor_task"]


def test_decision_choosing_first_branch_runs_its_whole_chain(dispatcher: Any) -> None:
    wf = run(b.decision("Decide0"), dispatcher, branch=0)
    assert wf.runtime_parameters["trace"] == [
        "left_executor_task",
        "left_after_executor_task",
        "final_executor_task",
    ]
    assert statuses(wf.id)["right_executor_task"] == S.SKIPPED


def test_decision_choosing_no_branch_ends_the_chain_and_the_workflow_goes_on(dispatcher: Any) -> None:
    wf = run(b.decision("DecideNone"), dispatcher)
    s = statuses(wf.id)
    assert s["left_executor_task"] == s["right_executor_task"] == S.SKIPPED
    assert s["main"] == S.COMPLETED
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["final_executor_task"]


def test_decision_returning_a_foreign_id_fails_with_a_clear_error(dispatcher: Any) -> None:
    wf = run(b.decision("DecideForeign", decider=t.PickForeign), dispatcher)
    node = stored_nodes.get(workflow_id=wf.id, name__endswith=".decide")
    assert node.status == S.FAILURE
    assert "not one of its successors" in node.error
    assert wf.status == S.FAILURE


# -- parallel groups -------------------------------------------------------------------------------
def test_join_all_waits_for_every_branch_then_walks_on(dispatcher: Any) -> None:
    tmpl = b.parallel_tasks(
        "JoinAll", b.JOIN_ALL, b.task(t.SetFlag, "x").build(), b.task(t.SetFlag, "y").build()
    )
    wf = run(tmpl, dispatcher)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["x_executor_task"] and wf.runtime_parameters["y_executor_task"]
    assert wf.runtime_parameters["trace"] == ["joined_executor_task"]
    assert statuses(wf.id)["group"] == S.COMPLETED


def test_join_all_does_not_complete_while_a_branch_waits(dispatcher: Any) -> None:
    tmpl = b.parallel_tasks("JoinAllWaits", b.JOIN_ALL, b.task(t.SetFlag, "x").build(), b.listener("wait"))
    wf = run(tmpl, dispatcher)
    s = statuses(wf.id)
    assert s["x_executor_task"] == S.COMPLETED
    assert s["wait_listener_task"] == S.EXECUTING
    assert s["group"] == S.EXECUTING
    assert s["joined_executor_task"] == S.NOT_STARTED
    assert wf.status == S.EXECUTING


def test_atleast_one_completes_with_the_first_branch_and_stops_the_others(dispatcher: Any) -> None:
    t.STOPPED_HOOKS.clear()
    tmpl = b.parallel_tasks("AtLeastOne", b.ATLEAST_ONE, b.listener("wait"), b.task(t.SetFlag, "x").build())
    wf = run(tmpl, dispatcher)
    s = statuses(wf.id)
    assert s["group"] == S.COMPLETED
    assert s["wait_listener_task"] == S.STOPPED
    assert wf.status == S.COMPLETED
    assert t.STOPPED_HOOKS == ["wait_listener_task"]


def test_process_level_group_honours_atleast_one(dispatcher: Any) -> None:
    tmpl = b.parallel_processes(
        "ProcAtLeastOne",
        b.ATLEAST_ONE,
        b.process("waiting", b.listener("waiting")),
        b.process("quick", b.chain((t.SetFlag, "quick"))),
    )
    wf = run(tmpl, dispatcher)
    s = statuses(wf.id)
    assert s["group"] == S.COMPLETED
    assert s["waiting"] == S.STOPPED
    assert s["tail_executor_task"] == S.COMPLETED
    assert wf.status == S.COMPLETED


def test_process_level_group_join_all_runs_every_process(dispatcher: Any) -> None:
    tmpl = b.parallel_processes(
        "ProcJoinAll",
        b.JOIN_ALL,
        b.process("p1", b.chain((t.SetFlag, "one"))),
        b.process("p2", b.chain((t.SetFlag, "two"))),
    )
    wf = run(tmpl, dispatcher)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["one_executor_task"] and wf.runtime_parameters["two_executor_task"]


# -- dynamic shapes ---------------------------------------------------------------------------------
def test_dynamic_processes_are_given_per_creation_and_never_change_the_template(dispatcher: Any) -> None:
    from dagger_django import DAGBuilderHelper, Dagger

    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    placeholder = helper.generic_dynamic_process_builder(name="dynamic")
    last = b.process("last", b.chain((t.Record, "last")))
    root = helper.build_and_link_processes([placeholder, last])
    tmpl = helper.generic_template(template_name="Dynamic", root_process=root)

    def builders(*names: str) -> list[Any]:
        return [b.process(n, b.chain((t.Record, n))) for n in names]

    one = tmpl.create_instance(submit_task=True, dynamic_process_builders={"dynamic": builders("x", "y")})
    two = tmpl.create_instance(submit_task=True, dynamic_process_builders={"dynamic": builders("z")})
    plain = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    assert reload(one.id).runtime_parameters["trace"] == [
        "x_executor_task",
        "y_executor_task",
        "last_executor_task",
    ]
    assert reload(two.id).runtime_parameters["trace"] == ["z_executor_task", "last_executor_task"]
    assert reload(plain.id).runtime_parameters["trace"] == ["last_executor_task"]


def test_n_parallel_copies_of_a_process_per_creation(dispatcher: Any) -> None:
    from dagger_django import Dagger, ParallelCompositeProcessTemplateDagBuilder, ParallelCompositeTask

    group = ParallelCompositeProcessTemplateDagBuilder(Dagger.app)
    group.set_name("shipping").set_type(ParallelCompositeTask)
    group.set_parallel_process_templates(b.process("ship", b.chain((t.Record, "ship"))).build())
    tmpl = b.template("Copies", group)
    copies = b.process("ship", b.chain((t.Record, "ship")))
    wf = tmpl.create_instance(submit_task=True, parallel_process_templates={"shipping": (4, copies)})
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert stored_nodes.filter(workflow_id=wf.id, name__endswith="ship_executor_task").count() == 4


# -- stop -------------------------------------------------------------------------------------------
def test_stop_reaches_parallel_children_and_calls_stop_hooks(dispatcher: Any) -> None:
    t.STOPPED_HOOKS.clear()
    tmpl = b.parallel_tasks("StopMe", b.JOIN_ALL, b.listener("w1"), b.listener("w2"))
    wf = run(tmpl, dispatcher)
    services.workflow_stop(workflow_id=wf.id)
    dispatcher.drain()
    s = statuses(wf.id)
    assert reload(wf.id).status == S.STOPPED
    assert s["w1_listener_task"] == s["w2_listener_task"] == s["group"] == s["main"] == S.STOPPED
    assert s["joined_executor_task"] == S.STOPPED
    assert sorted(t.STOPPED_HOOKS) == ["w1_listener_task", "w2_listener_task"]
    with pytest.raises(TaskInvalidState):
        services.workflow_stop(workflow_id=wf.id)


def test_stop_while_a_task_runs_discards_its_late_result(dispatcher: Any) -> None:
    tmpl = b.linear("StopRunning", (t.Record, "a"), (t.Record, "b"))
    wf = tmpl.create_instance(submit_task=True)
    _, node_id, lease = dispatcher.runs.popleft()
    work = services._claim(wf.id, __import__("uuid").UUID(node_id), lease)
    services.workflow_stop(workflow_id=wf.id)
    outcome = services._execute(work)
    assert services._apply(work, outcome, lease=lease, claim_next=True) is None
    assert set(statuses(wf.id).values()) == {S.STOPPED}
    assert "trace" not in reload(wf.id).runtime_parameters


# -- failures and retries -------------------------------------------------------------------------------
def test_exception_halts_the_workflow_and_retry_resumes_from_the_failed_task(dispatcher: Any) -> None:
    tmpl = b.linear("Halt", (t.Record, "a"), (t.Boom, "boom"), (t.Record, "c"))
    wf = run(tmpl, dispatcher)
    s = statuses(wf.id)
    assert wf.status == S.FAILURE
    assert s["boom_executor_task"] == S.FAILURE and s["main"] == S.FAILURE
    assert s["c_executor_task"] == S.NOT_STARTED
    assert "RuntimeError: boom" in wf.error
    wf = fix_and_retry(wf, dispatcher)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["a_executor_task", "boom_executor_task", "c_executor_task"]


def test_retry_is_refused_unless_the_workflow_failed(dispatcher: Any) -> None:
    wf = run(b.linear("NoRetry", (t.Record, "a")), dispatcher)
    with pytest.raises(TaskInvalidState):
        services.workflow_retry(workflow_id=wf.id)


def test_failure_policy_continue_walks_on_like_the_original(dispatcher: Any) -> None:
    tmpl = b.linear("Continue", (t.Boom, "boom"), (t.Record, "c"), failure_policy="continue")
    wf = run(tmpl, dispatcher)
    s = statuses(wf.id)
    assert s["boom_executor_task"] == S.FAILURE
    assert s["c_executor_task"] == S.COMPLETED
    assert wf.status == S.COMPLETED  # the process takes its last task's status, as in 0.2.6


def test_halted_parallel_sibling_finishing_later_is_walked_on_after_retry(dispatcher: Any) -> None:
    tmpl = b.parallel_tasks(
        "HaltParallel", b.JOIN_ALL, b.task(t.Boom, "boom").build(), b.task(t.SetFlag, "x").build()
    )
    wf = run(tmpl, dispatcher)
    assert wf.status == S.FAILURE
    assert statuses(wf.id)["x_executor_task"] == S.COMPLETED
    wf = fix_and_retry(wf, dispatcher)
    assert wf.status == S.COMPLETED
    assert statuses(wf.id)["group"] == S.COMPLETED


def test_dagger_submit_and_stop_return_the_workflow_like_get_instance(dispatcher: Any) -> None:
    from dagger_django import Dagger, ITemplateDAGInstance, TaskStatusEnum

    tmpl = b.template("FacadeViews", b.process("main", b.listener("wait")))
    created = tmpl.create_instance(order_id="f-1")
    submitted = Dagger.submit(created)
    assert isinstance(submitted, ITemplateDAGInstance) and submitted.id == created.id
    assert submitted.status.code == TaskStatusEnum.EXECUTING.name
    assert len(submitted.tasks) == 2 and submitted.runtime_parameters["order_id"] == "f-1"
    dispatcher.drain()
    stopped = Dagger.stop(str(created.id))
    assert stopped.status.code == TaskStatusEnum.STOPPED.name
    assert {task.status.code for task in stopped.tasks.values()} == {TaskStatusEnum.STOPPED.name}
    assert stopped.model.status == S.STOPPED == Dagger.get_instance(created.id).model.status


def test_atleast_one_rides_out_a_failed_branch_when_another_completes(dispatcher: Any) -> None:
    tmpl = b.parallel_tasks(
        "AtLeastOneFails", b.ATLEAST_ONE, b.task(t.Boom, "boom").build(), b.task(t.SetFlag, "x").build()
    )
    wf = run(tmpl, dispatcher)
    s = statuses(wf.id)
    assert s["boom_executor_task"] == S.FAILURE  # recorded, with its error
    assert s["x_executor_task"] == s["group"] == s["joined_executor_task"] == S.COMPLETED
    assert wf.status == S.COMPLETED


def test_process_level_atleast_one_rides_out_a_failed_process(dispatcher: Any) -> None:
    tmpl = b.parallel_processes(
        "ProcAtLeastOneFails",
        b.ATLEAST_ONE,
        b.process("broken", b.chain((t.Boom, "boom"), (t.Record, "never"))),
        b.process("quick", b.chain((t.SetFlag, "quick"))),
    )
    wf = run(tmpl, dispatcher)
    s = statuses(wf.id)
    assert s["boom_executor_task"] == s["broken"] == S.FAILURE
    assert s["never_executor_task"] == S.STOPPED  # the group stops what had not finished
    assert s["group"] == s["tail_executor_task"] == S.COMPLETED
    assert wf.status == S.COMPLETED


def test_atleast_one_with_every_branch_failed_halts_and_retries_both(dispatcher: Any) -> None:
    tmpl = b.parallel_tasks(
        "AtLeastOneAllFail", b.ATLEAST_ONE, b.task(t.Boom, "one").build(), b.task(t.Boom, "two").build()
    )
    wf = run(tmpl, dispatcher)
    s = statuses(wf.id)
    assert s["one_executor_task"] == s["two_executor_task"] == s["group"] == S.FAILURE
    assert s["joined_executor_task"] == S.NOT_STARTED
    assert wf.status == S.FAILURE
    wf = fix_and_retry(wf, dispatcher)
    assert wf.status == S.COMPLETED
    assert statuses(wf.id)["group"] == S.COMPLETED
    assert wf.runtime_parameters["trace"][0] in ("one_executor_task", "two_executor_task")


def test_retry_policy_backs_off_and_succeeds_with_a_new_idempotency_key(dispatcher: Any, clock: Any) -> None:
    tmpl = b.linear("Flaky", (t.Flaky, "flaky"))
    wf = tmpl.create_instance(submit_task=True, fail_times=2)
    dispatcher.drain()
    node = stored_nodes.get(workflow_id=wf.id, name__endswith="flaky_executor_task")
    assert node.status == S.SUBMITTED and node.attempts == 1
    timer = Timer.objects.get(workflow_id=wf.id)
    assert (timer.due_at - clock.now()).total_seconds() == pytest.approx(10.0)
    clock.advance(seconds=10)
    dispatcher.drain()
    assert Timer.objects.filter(workflow_id=wf.id).count() == 2  # second backoff: 20 s
    clock.advance(seconds=20)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    node = stored_nodes.get(pk=node.id)
    assert node.attempts == 3
    assert wf.runtime_parameters["keys"] == [f"{node.id}:3"]  # failed attempts' changes are dropped


def test_retries_exhausted_fail_the_task(dispatcher: Any, clock: Any) -> None:
    tmpl = b.linear("FlakyForever", (t.Flaky, "flaky"))
    wf = tmpl.create_instance(submit_task=True, fail_times=99)
    for _ in range(3):
        dispatcher.drain()
        clock.advance(seconds=100)
    dispatcher.drain()
    node = stored_nodes.get(workflow_id=wf.id, name__endswith="flaky_executor_task")
    assert node.status == S.FAILURE and node.attempts == 3
    assert "ConnectionError: attempt 3 failed" in node.error


def test_setting_status_failure_in_execute_counts_as_a_failure(dispatcher: Any) -> None:
    wf = run(b.linear("SetsFailure", (t.SetsFailure, "f"), (t.Record, "b")), dispatcher)
    assert statuses(wf.id)["f_executor_task"] == S.FAILURE
    assert wf.status == S.FAILURE


def test_task_storing_a_non_json_value_fails_and_stores_nothing_of_it(dispatcher: Any) -> None:
    wf = run(b.linear("NonJson", (t.WritesNonJson, "w")), dispatcher, keep=1)
    node = stored_nodes.get(workflow_id=wf.id, name__endswith="w_executor_task")
    assert node.status == S.FAILURE
    assert "InvalidRuntimeParameters" in node.error
    assert wf.runtime_parameters == {"keep": 1}


def test_task_class_that_cannot_be_imported_fails_clearly_and_can_be_retried(dispatcher: Any) -> None:
    tmpl = b.linear("Missing", (t.Record, "a"))
    wf = tmpl.create_instance(submit_task=True)
    stored_nodes.filter(workflow_id=wf.id, kind="executor").update(task_class="tests.engine.tasks:Gone")
    dispatcher.drain()
    node = stored_nodes.get(workflow_id=wf.id, kind="executor")
    assert node.status == S.FAILURE
    assert "tests.engine.tasks:Gone" in node.error
    assert reload(wf.id).status == S.FAILURE
    stored_nodes.filter(pk=node.pk).update(task_class="tests.engine.tasks:Record")
    services.workflow_retry(workflow_id=wf.id)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


# -- at-least-once ---------------------------------------------------------------------------------------
def test_redelivered_message_after_completion_has_no_effect(dispatcher: Any) -> None:
    tmpl = b.linear("Redeliver", (t.Record, "a"))
    wf = tmpl.create_instance(submit_task=True)
    message = dispatcher.runs[0]
    dispatcher.drain()
    before = len(history(wf.id))
    assert services.node_run(workflow_id=message[0], node_id=message[1], lease=message[2]) == 0
    assert services.node_run(workflow_id=message[0], node_id=message[1], lease="other") == 0
    assert len(history(wf.id)) == before
    assert reload(wf.id).runtime_parameters["trace"] == ["a_executor_task"]


def test_executor_interrupted_by_a_crash_runs_again_when_its_message_returns(
    dispatcher: Any, clock: Any
) -> None:
    tmpl = b.linear("Crash", (t.Flaky, "a"), (t.Record, "b"))
    wf = tmpl.create_instance(submit_task=True)
    wf_id, node_id, lease = dispatcher.runs.popleft()
    # the worker claims the node, then dies before applying the result
    work = services._claim(wf.id, __import__("uuid").UUID(node_id), lease)
    assert work is not None and work.attempt == 1
    # acks_late: the broker delivers the same message (same task id = same lease) again at once;
    # the lease is fresh (the worker may be alive), so it runs nothing and comes back later
    with pytest.raises(services.LeaseHeld) as held:
        services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease)
    clock.advance(seconds=held.value.retry_in)  # no heartbeat came: the worker is dead
    assert services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease) == 2
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["keys"] == [f"{node_id}:2"]
    assert len(history(wf.id, "reclaimed")) == 1


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"when": object()}, InvalidRuntimeParameters),
        ({"n": float("nan")}, InvalidRuntimeParameters),
        ({"blob": "x" * 300_000}, RuntimeParametersTooLarge),
        ({"name": "a\x00b"}, InvalidRuntimeParameters),
        ({"nested": [{"k\x00": 1}]}, InvalidRuntimeParameters),
    ],
)
def test_bad_runtime_parameters_are_refused_and_nothing_is_stored(
    dispatcher: Any, params: Any, error: Any
) -> None:
    tmpl = b.linear("BadParams", (t.Record, "a"))
    with pytest.raises(error):
        tmpl.create_instance(submit_task=True, **params)
    assert Workflow.objects.count() == 0 and stored_nodes.count() == 0
    assert dispatcher.sent == []


def test_runtime_parameter_changes_must_be_an_object(dispatcher: Any) -> None:
    wf = b.linear("BadChanges", (t.Record, "a")).create_instance(x=1)
    with pytest.raises(InvalidRuntimeParameters):
        services.workflow_update_parameters(workflow_id=wf.id, changes=["x"])
    assert reload(wf.id).runtime_parameters == {"x": 1}


def test_unknown_workflow_id_is_a_clear_error(dispatcher: Any) -> None:
    with pytest.raises(WorkflowDoesNotExist):
        services.workflow_stop(workflow_id="not-a-uuid")
    with pytest.raises(WorkflowDoesNotExist):
        services.workflow_get(workflow_id="00000000-0000-0000-0000-000000000000")


def test_duplicate_workflow_id_is_refused_without_touching_the_first(dispatcher: Any) -> None:
    tmpl = b.linear("DupId", (t.Record, "a"))
    wf = tmpl.create_instance(x=1)
    with pytest.raises(TaskInvalidState):
        tmpl.create_instance(wf.id, x=2)
    assert reload(wf.id).runtime_parameters == {"x": 1}
    assert stored_nodes.filter(workflow_id=wf.id).count() == 2


# -- versions, deletion, callbacks, signals --------------------------------------------------------------------
def test_template_versions_follow_the_graph_and_workflows_keep_theirs(dispatcher: Any) -> None:
    v1 = b.linear("Versioned", (t.Record, "a"))
    first = v1.create_instance()
    v1.create_instance()
    assert WorkflowTemplate.objects.filter(name="Versioned").count() == 1
    v2 = b.linear("Versioned", (t.Record, "a"), (t.Record, "b"))
    second = v2.create_instance()
    assert reload(first.id).template.version == 1
    assert reload(second.id).template.version == 2


def test_delete_workflow_on_complete_removes_it_after_the_last_transition(
    dispatcher: Any, settings: Any
) -> None:
    settings.DAGGER = {"DELETE_WORKFLOW_ON_COMPLETE": True}
    seen: list[str] = []
    from dagger_django import signals

    def on_done(sender: Any, workflow: Any, **kwargs: Any) -> None:
        seen.append(workflow.status)

    signals.workflow_completed.connect(on_done)
    try:
        wf = b.linear("Deleted", (t.Record, "a")).create_instance(submit_task=True)
        dispatcher.drain()
    finally:
        signals.workflow_completed.disconnect(on_done)
    assert not Workflow.objects.filter(pk=wf.id).exists()
    assert not stored_nodes.filter(workflow_id=wf.id).exists()
    assert seen == [S.COMPLETED]


def test_update_callbacks_sync_and_async_run_after_commit(dispatcher: Any, settings: Any) -> None:
    t.CALLBACK_SEEN.clear()
    settings.DAGGER = {"TASK_UPDATE_CALLBACKS": ["tests.engine.tasks.sync_callback", t.async_callback]}
    run(b.linear("Callbacks", (t.Record, "a")), dispatcher)
    assert ("sync", "COMPLETED") in t.CALLBACK_SEEN and ("async", "COMPLETED") in t.CALLBACK_SEEN
    assert t.CALLBACK_SEEN[0] == ("sync", "EXECUTING")


def test_signal_receivers_that_raise_change_nothing(dispatcher: Any) -> None:
    from dagger_django import signals

    def broken(**kwargs: Any) -> None:
        raise ValueError("receiver bug")

    signals.task_completed.connect(broken)
    try:
        wf = run(b.linear("BrokenReceiver", (t.Record, "a")), dispatcher)
    finally:
        signals.task_completed.disconnect(broken)
    assert wf.status == S.COMPLETED


# -- cost per transition -----------------------------------------------------------------------------------
def test_queries_and_rows_per_transition_stay_small(
    dispatcher: Any, django_assert_max_num_queries: Any
) -> None:
    """W5's budget (docs/benchmarks.md), counted as benchmarks/cost.py counts it."""
    tmpl = b.linear("Cost", (t.Record, "a"), (t.Record, "b"), (t.Record, "c"))
    tmpl.create_instance()  # stores the template version
    # BEGIN, template version, workflow (its 4 nodes in its row), history (one insert), COMMIT;
    # rows: the workflow and one history record.
    with django_assert_max_num_queries(5), counting() as created:
        wf = tmpl.create_instance(submit_task=True)
    assert created["rows_written"] <= 2
    wf_id, node_id, lease = dispatcher.runs.popleft()
    # One Celery message runs the whole chain: a claim, then 3 applies (each claiming the next
    # step inline); each transaction is BEGIN, lock and load (one statement: the nodes are in the
    # row), the workflow row, the history record, COMMIT. Rows: the workflow row and one history
    # record per transaction.
    with django_assert_max_num_queries(4 * 5), counting() as ran:
        assert services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease) == 3
    assert reload(wf.id).status == S.COMPLETED
    assert ran["rows_written"] <= 8
    assert created["rows_written"] + ran["rows_written"] <= 10  # the target: 12
    # 17 events (transitions, parameter changes), one history row per transaction: 5 (10 rows in
    # all; a row per node made it 20, and a history row per event 32).
    assert len(history(wf.id)) == 17
    assert HistoryRecord.objects.filter(workflow_id=wf.id).count() == 5


def test_task_storing_a_nul_character_fails_cleanly(dispatcher: Any) -> None:
    wf = run(b.linear("Nul", (t.WritesNul, "w")), dispatcher)
    node = stored_nodes.get(workflow_id=wf.id, name__endswith="w_executor_task")
    assert node.status == S.FAILURE and "NUL" in node.error
    assert wf.status == S.FAILURE


def test_business_key_of_a_structured_value_is_json(dispatcher: Any) -> None:
    wf = b.linear("StructKey", (t.Record, "a")).create_instance(partition_key_lookup="k", k={"deep": [1]})
    assert reload(wf.id).business_key == '{"deep":[1]}'


def test_a_step_of_a_workflow_of_a_thousand_nodes_rewrites_one_page_not_the_workflow(
    dispatcher: Any,
) -> None:
    """A parallel group of 1,000 tasks: its nodes are stored in 16 pages of 64; claiming and
    completing a task on the last page writes that page, the workflow's row (without its first
    page) and a history record, never the other pages (docs/internals.md, "The 1,000-node bound")."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from dagger_django import (
        Dagger,
        ParallelCompositeTask,
        ParallelCompositeTaskTemplateBuilder,
        TaskOperator,
    )

    group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 1000, b.task(t.Record, "leg").build())
    group.set_type(ParallelCompositeTask).set_name("group").set_task_operator(TaskOperator.JOIN_ALL)
    tmpl = b.template("Thousand", b.process("main", group.build()))
    wf = tmpl.create_instance(submit_task=True)
    assert reload(wf.id).node_pages == 15  # 1,002 nodes: the row's 64 and 15 pages
    runs = list(dispatcher.runs)
    dispatcher.runs.clear()
    assert len(runs) == 1000
    wf_id, node_id, lease = runs[-1]  # the last leg: the last page
    with CaptureQueriesContext(connection) as ctx, counting() as claimed:
        work = services._claim(wf.id, __import__("uuid").UUID(node_id), lease)
    assert work is not None
    with counting() as applied:
        services._apply(work, services._execute(work), lease=lease, claim_next=False)
    # The workflow's row (its marks), the last page and one history record; nothing else.
    assert claimed["rows_written"] == applied["rows_written"] == 3
    writes = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith(("UPDATE", "INSERT"))]
    assert not [sql for sql in writes if '"nodes" =' in sql and "dagger_django_workflow" in sql]
    assert stored_nodes.get(pk=node_id).status == S.COMPLETED


def test_retrying_a_workflow_keeps_counting_attempts_so_keys_never_repeat(
    dispatcher: Any, clock: Any
) -> None:
    tmpl = b.linear("RetryKeys", (t.Flaky, "flaky"))
    wf = tmpl.create_instance(submit_task=True, fail_times=3)
    for _ in range(3):
        dispatcher.drain()
        clock.advance(seconds=100)
    assert reload(wf.id).status == S.FAILURE
    services.workflow_retry(workflow_id=wf.id)
    dispatcher.drain()
    node = stored_nodes.get(workflow_id=wf.id, name__endswith="flaky_executor_task")
    assert node.status == S.COMPLETED and node.attempts == 4
    assert reload(wf.id).runtime_parameters["keys"] == [f"{node.id}:4"]


def test_failed_trigger_is_run_again_when_the_workflow_is_retried(dispatcher: Any, clock: Any) -> None:
    from dagger_django import Dagger, TriggerTaskTemplateBuilder

    trigger = TriggerTaskTemplateBuilder(Dagger.app).set_type(t.TriggerBoom).set_name("when")
    trigger.set_time_to_execute_lookup_key("at")
    tmpl = b.template("RetryTrigger", b.process("main", trigger.build()))
    wf = tmpl.create_instance(submit_task=True, at=clock.now().timestamp() - 1)
    dispatcher.drain()
    assert reload(wf.id).status == S.FAILURE
    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    services.workflow_retry(workflow_id=wf.id)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_runtime_parameters_of_a_finished_workflow_cannot_change(dispatcher: Any) -> None:
    wf = run(b.linear("Frozen", (t.Record, "a")), dispatcher)
    with pytest.raises(TaskInvalidState):
        services.workflow_update_parameters(workflow_id=wf.id, changes={"x": 1})
    assert "x" not in reload(wf.id).runtime_parameters


def test_update_callbacks_also_run_when_only_parameters_change(dispatcher: Any, settings: Any) -> None:
    t.CALLBACK_SEEN.clear()
    wf = b.linear("CallbackParams", (t.Record, "a")).create_instance(x=1)
    settings.DAGGER = {"TASK_UPDATE_CALLBACKS": [t.sync_callback]}
    services.workflow_update_parameters(workflow_id=wf.id, changes={"x": 2})
    assert t.CALLBACK_SEEN == [("sync", "NOT_STARTED")]
