"""Which failed tasks a retry runs again, on the real database with the in-memory dispatcher.

Found by the state-machine campaign (tests/faults/test_state_machine.py, invariant "joins": a
group that ended never has a branch running again).
"""

from __future__ import annotations

from typing import Any

from dagger_django import (
    Dagger,
    ParallelCompositeProcessTemplateDagBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
)
from dagger_django.engine import services
from dagger_django.models import Status

from ..helpers import history
from . import builders as b
from . import tasks as t
from .conftest import reload, statuses

S = Status


def _group_then(name: str, tail: tuple[type, str], *children: Any) -> Any:
    """main: an ATLEAST_ONE group of ``children``, then ``tail``."""
    group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 1, children[0])
    for child in children[1:]:
        group.add_parallel_task(child)
    group.set_type(ParallelCompositeTask).set_name("group").set_task_operator(b.ATLEAST_ONE)
    group.set_next(b.task(*tail).build())
    return b.template(name, b.process("main", group.build()))


def test_retry_leaves_the_failed_branch_of_a_completed_atleast_one_group_alone(dispatcher: Any) -> None:
    tmpl = _group_then(
        "RetryCompletedGroup",
        (t.Boom, "tail"),
        b.task(t.Boom, "left").build(),
        b.task(t.Record, "right").build(),
    )
    wf = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    s = statuses(wf.id)
    assert (s["left_executor_task"], s["group"], s["tail_executor_task"]) == (
        S.FAILURE,
        S.COMPLETED,
        S.FAILURE,
    )
    assert reload(wf.id).status == S.FAILURE

    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    services.workflow_retry(workflow_id=wf.id)
    # The group's outcome was decided by its first completed branch: only the tail runs again.
    assert statuses(wf.id)["left_executor_task"] == S.FAILURE
    dispatcher.drain()
    wf = reload(wf.id)
    s = statuses(wf.id)
    assert wf.status == S.COMPLETED
    assert (s["left_executor_task"], s["group"], s["tail_executor_task"]) == (
        S.FAILURE,
        S.COMPLETED,
        S.COMPLETED,
    )
    assert wf.runtime_parameters["trace"] == ["right_executor_task", "tail_executor_task"]
    retried = [e.node_name for e in history(wf.id, "retried")]
    assert not [name for name in retried if name.endswith("left_executor_task")]


def test_retry_leaves_a_failed_process_of_a_completed_process_group_alone(dispatcher: Any) -> None:
    group = ParallelCompositeProcessTemplateDagBuilder(Dagger.app)
    group.set_parallel_process_templates(b.process("broken", b.chain((t.Boom, "boom"))).build())
    group.set_parallel_process_templates(b.process("quick", b.chain((t.Record, "quick"))).build())
    group.set_name("group").set_parallel_operator_type(b.ATLEAST_ONE).set_type(ParallelCompositeTask)
    tail = b.process("tail", b.task(t.Boom, "tail").build())
    root = b.helper.build_and_link_processes([group, tail])
    tmpl = b.helper.generic_template(template_name="RetryCompletedProcessGroup", root_process=root)
    wf = tmpl.create_instance(submit_task=True)
    dispatcher.drain()
    s = statuses(wf.id)
    assert (s["broken"], s["group"], s["tail_executor_task"]) == (S.FAILURE, S.COMPLETED, S.FAILURE)

    services.workflow_update_parameters(workflow_id=wf.id, changes={"fixed": True})
    services.workflow_retry(workflow_id=wf.id)
    dispatcher.drain()
    wf = reload(wf.id)
    s = statuses(wf.id)
    assert wf.status == S.COMPLETED
    assert (s["boom_executor_task"], s["broken"], s["group"]) == (S.FAILURE, S.FAILURE, S.COMPLETED)
    assert wf.runtime_parameters["trace"] == ["quick_executor_task", "tail_executor_task"]
