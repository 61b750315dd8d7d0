"""Building task objects and workflow views from rows, and the task classes themselves (no database)."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from dagger_django import (
    DecisionTask,
    DefaultMonitoringTask,
    DefaultProcessTemplateDAGInstance,
    DefaultTemplateDAGInstance,
    ExecutorTask,
    IntervalTask,
    KafkaCommandTask,
    KafkaListenerTask,
    MonitoredProcessTemplateDAGInstance,
    ParallelCompositeTask,
    TaskClassNotFound,
    TaskStatus,
    TaskStatusEnum,
    TriggerTask,
)
from dagger_django.definitions.tasks import HookResult, resolve_hook_result
from dagger_django.definitions.views import build_task, build_workflow_view, import_class

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


class Charge(ExecutorTask[str, str]):
    max_retries = 3

    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["charged"] = True


class Ready(KafkaListenerTask[str, str]):
    correlatable_key = "order_id"

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True


class Poll(IntervalTask[str, str]):
    def interval_execute(self, runtime_parameters: dict[str, Any]) -> Any:
        return super().interval_execute(runtime_parameters)


class AsyncProcess(DefaultProcessTemplateDAGInstance):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> Any:
        await super().execute(runtime_parameters, workflow_instance)
        return "ran"


class Shop(DefaultTemplateDAGInstance):
    failure_policy = "continue"


def node(**overrides: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "workflow_id": uuid.uuid4(),
        "parent_id": uuid.uuid4(),
        "name": "WF.P.task",
        "node_type": "LEAF",
        "kind": "executor",
        "task_class": f"{__name__}:Charge",
        "status": "NOT_STARTED",
        "position": 0,
        "next_ids": [],
        "child_ids": [],
        "config": {"template_name": "task", "allow_skip_to": False, "reprocess_on_message": False},
        "attempts": 0,
        "time_created": T0,
        "time_submitted": None,
        "time_completed": None,
        "error": "",
    }
    values.update(overrides)
    return SimpleNamespace(**values)


# -- import_class ------------------------------------------------------------------------------------------
def test_import_class_accepts_colon_and_dotted_paths() -> None:
    assert import_class(f"{__name__}:Charge") is Charge
    assert import_class(f"{__name__}.Charge") is Charge
    assert import_class("dagger_django.definitions.tasks:ExecutorTask") is ExecutorTask


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("no_such_module_xyz:Thing", "failed to import"),
        (f"{__name__}:Missing", "has no attribute"),
        (f"{__name__}:T0", "not a class"),
        ("", "empty"),
        ("justaname", "expected"),
    ],
)
def test_import_class_names_the_path_and_the_reason(path: str, reason: str) -> None:
    with pytest.raises(TaskClassNotFound, match=reason) as info:
        import_class(path)
    assert repr(path) in str(info.value)


# -- build_task -------------------------------------------------------------------------------------------------
def test_build_task_gives_the_seed_fields() -> None:
    nxt = uuid.uuid4()
    row = node(
        status="EXECUTING", next_ids=[str(nxt)], attempts=2, time_submitted=T0, config={"allow_skip_to": True}
    )
    task = build_task(row)
    assert type(task) is Charge
    assert task.id == row.id and task.parent_id == row.parent_id and task.task_name == "WF.P.task"
    assert task.task_type == "LEAF"
    assert task.status == TaskStatus(code="EXECUTING", value="EXECUTING")
    assert task.next_dags == [nxt] and task.allow_skip_to is True and task.reprocess_on_message is False
    assert task.time_created == int(T0.timestamp()) == task.time_submitted and task.time_completed == 0
    assert task.attempt == 2 and task.idempotency_key == f"{row.id}:2"


def test_first_attempt_is_one_even_before_the_node_ran() -> None:
    task = build_task(node(attempts=0))
    assert task.attempt == 1 and task.idempotency_key.endswith(":1")


def test_build_task_sets_kind_specific_fields() -> None:
    listener: Any = build_task(
        node(
            kind="listener",
            task_class=f"{__name__}:Ready",
            config={"topic": "ready", "correlatable_key": "order_id"},
        )
    )
    assert listener.topic == "ready" and listener.correlatable_key == "order_id"
    interval: Any = build_task(
        node(
            kind="interval",
            task_class=f"{__name__}:Poll",
            config={
                "time_to_execute": None,
                "time_to_force_complete": 2_000_000_000,
                "interval_execute_period": 10,
            },
        )
    )
    assert (interval.time_to_execute, interval.time_to_force_complete, interval.interval_execute_period) == (
        None,
        2_000_000_000,
        10,
    )
    children = [uuid.uuid4(), uuid.uuid4()]
    group: Any = build_task(
        node(
            kind="parallel",
            node_type="PARALLEL_COMPOSITE",
            task_class="dagger_django.definitions.tasks:ParallelCompositeTask",
            child_ids=[str(c) for c in children],
            config={"operator": "ATLEAST_ONE", "template_name": "fan"},
        )
    )
    assert group.parallel_child_task_list == children and group.operator_type == "ATLEAST_ONE"
    assert group.process_name == "fan" and group.task_type == "PARALLEL_COMPOSITE"
    proc: Any = build_task(
        node(
            kind="process",
            node_type="SUB_DAG",
            parent_id=None,
            task_class="dagger_django.definitions.tasks:MonitoredProcessTemplateDAGInstance",
            child_ids=[str(children[0])],
            config={"template_name": "Order", "max_run_duration": 30},
        )
    )
    assert isinstance(proc, MonitoredProcessTemplateDAGInstance)
    assert proc.root_dag == children[0] and proc.process_name == "Order" and proc.max_run_duration == 30
    assert proc.parent_id is None and proc.monitoring_task_id is None
    watched = uuid.uuid4()
    monitor: Any = build_task(
        node(
            kind="monitor",
            task_class="dagger_django.definitions.tasks:DefaultMonitoringTask",
            config={"time_to_execute": 120000, "monitored_task_id": str(watched)},
        )
    )
    assert monitor.monitored_task_id == watched and monitor.time_to_execute == 120000


def test_build_task_with_a_missing_class_raises_when_strict() -> None:
    with pytest.raises(TaskClassNotFound, match="GoneTask"):
        build_task(node(task_class=f"{__name__}:GoneTask"), strict=True)


@pytest.mark.parametrize(
    ("kind", "base"),
    [
        ("executor", ExecutorTask),
        ("command", KafkaCommandTask),
        ("listener", KafkaListenerTask),
        ("decision", DecisionTask),
        ("trigger", TriggerTask),
        ("interval", IntervalTask),
        ("monitor", DefaultMonitoringTask),
        ("parallel", ParallelCompositeTask),
        ("process", DefaultProcessTemplateDAGInstance),
    ],
)
def test_build_task_with_a_missing_class_falls_back_to_its_kind_when_not_strict(
    kind: str, base: type
) -> None:
    task = build_task(node(kind=kind, task_class="gone.module:Task", config={"topic": "t"}), strict=False)
    assert type(task) is base


def test_build_task_refuses_a_class_that_changed_family_when_strict() -> None:
    row = node(kind="listener", task_class=f"{__name__}:Charge")
    with pytest.raises(TaskClassNotFound, match="listener"):
        build_task(row, strict=True)
    assert type(build_task(row, strict=False)) is KafkaListenerTask


# -- build_workflow_view ----------------------------------------------------------------------------------------------
def workflow_row(**overrides: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "template_name": "Shop",
        "partition_key_lookup": "order_id",
        "status": "EXECUTING",
        "runtime_parameters": {"order_id": "o1"},
        "update_count": 3,
        "template_class": f"{__name__}:Shop",
        "time_created": T0,
        "time_submitted": T0,
        "time_completed": None,
        "root_node_id": None,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def test_build_workflow_view_gives_the_template_type_with_tasks_and_parameters() -> None:
    rows = [node(), node(kind="listener", task_class=f"{__name__}:Ready", config={"topic": "t"})]
    wf = workflow_row(root_node_id=rows[0].id)
    view = build_workflow_view(wf, rows)
    assert type(view) is Shop and view.failure_policy == "continue"
    assert view.id == wf.id and view.template_name == "Shop" and view.partition_key_lookup == "order_id"
    assert view.status == TaskStatusEnum.EXECUTING and view.update_count == 3 and view.root_dag == rows[0].id
    assert view.task_type == "ROOT"
    assert view.runtime_parameters is wf.runtime_parameters
    assert set(view.tasks) == {rows[0].id, rows[1].id}
    assert view.get_task(rows[1].id).topic == "t"
    assert view.get_task(str(rows[0].id)) is view.tasks[rows[0].id]
    assert view.get_task(wf.id) is view
    assert (
        view.get_task(None) is None and view.get_task(uuid.uuid4()) is None and view.get_task("junk") is None
    )


def test_a_view_builds_a_task_object_when_it_is_first_used_from_the_node_as_it_was() -> None:
    rows = [node(name=f"WF.P.t{i}") for i in range(3)]
    view = build_workflow_view(workflow_row(), rows)
    tasks = view.tasks
    assert dict.__len__(tasks) == 0  # nothing built yet
    rows[1].status = "COMPLETED"  # the engine moves on after the view was made
    second = view.get_task(rows[1].id)
    assert dict.__len__(tasks) == 1 and second.status == TaskStatusEnum.NOT_STARTED
    assert rows[2].id in tasks and uuid.uuid4() not in tasks and [] not in tasks and dict.__len__(tasks) == 1
    assert tasks.get(uuid.uuid4()) is None and tasks.get(rows[0].id).task_name == "WF.P.t0"
    # Whatever sees the whole dict sees every node, in node order, the built objects kept.
    assert list(tasks) == [r.id for r in rows] and len(tasks) == 3 and bool(tasks)
    assert tasks[rows[1].id] is second and list(dict(tasks)) == [r.id for r in rows]
    assert [t.task_name for t in tasks.values()] == ["WF.P.t0", "WF.P.t1", "WF.P.t2"]
    other = build_workflow_view(workflow_row(), rows[:1]).tasks
    assert list({**other}) == [rows[0].id] and other.copy() == {rows[0].id: other[rows[0].id]}
    extra = ExecutorTask(id=uuid.uuid4())
    third = build_workflow_view(workflow_row(), rows).tasks
    third[extra.id] = extra
    assert list(third) == [*(r.id for r in rows), extra.id]
    assert not build_workflow_view(workflow_row(), []).tasks
    with pytest.raises(KeyError):
        build_workflow_view(workflow_row(), rows).tasks[uuid.uuid4()]


def test_resolved_classes_are_cached_until_their_module_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    module = types.ModuleType("dagger_views_cache_probe")
    module.Task = type("Task", (ExecutorTask,), {"__module__": module.__name__})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    first = build_task(node(task_class=f"{module.__name__}:Task"))
    assert type(first) is module.Task  # type: ignore[attr-defined]
    replaced = types.ModuleType(module.__name__)
    replaced.Task = type("Task", (ExecutorTask,), {"__module__": module.__name__})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, replaced)
    assert type(build_task(node(task_class=f"{module.__name__}:Task"))) is replaced.Task  # type: ignore[attr-defined]
    fake = type("Fake", (ExecutorTask,), {"__module__": module.__name__})
    monkeypatch.setattr(replaced, "Task", fake)  # the name now refers to another class
    assert type(build_task(node(task_class=f"{module.__name__}:Task"))) is fake
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(TaskClassNotFound):
        build_task(node(task_class=f"{module.__name__}:Task"))


class Broken(ExecutorTask[str, str]):
    def __init__(self, **fields: Any) -> None:
        raise TypeError("a user class that cannot be built")


def test_a_task_that_cannot_be_built_raises_its_error_and_leaves_the_view_usable() -> None:
    rows = [node(name="WF.P.ok"), node(name="WF.P.broken", task_class=f"{__name__}:Broken")]
    view = build_workflow_view(workflow_row(), rows)
    with pytest.raises(TypeError, match="cannot be built"):
        view.get_task(rows[1].id)
    with pytest.raises(TypeError, match="cannot be built"):
        list(view.tasks)
    assert view.get_task(rows[0].id).task_name == "WF.P.ok"  # the rest is still there
    with pytest.raises(TypeError, match="cannot be built"):
        len(view.tasks)  # and the whole dict still tries every node


def test_a_view_reads_as_a_plain_mapping_however_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import copy
    import json
    import pickle

    from dagger_django.definitions import views

    built: list[Any] = []
    real = views.build_task

    def counting(row: Any, *, strict: bool = True) -> Any:
        built.append(row.id)
        return real(row, strict=strict)

    monkeypatch.setattr(views, "build_task", counting)
    rows = [node(), node(kind="listener", task_class=f"{__name__}:Ready", config={"topic": "t"})]
    wf = workflow_row(root_node_id=rows[0].id)
    eager = SimpleNamespace(tasks={r.id: real(r, strict=False) for r in rows})  # a plain dict
    view = build_workflow_view(wf, rows)
    assert built == []  # nothing built until the tasks are used
    assert view.get_task(rows[1].id).topic == "t"
    assert built == [rows[1].id]  # that one alone
    assert view.get_task(rows[1].id) is view.tasks[rows[1].id]
    assert list(view.tasks) == [rows[0].id, rows[1].id]
    assert built == [rows[1].id, rows[0].id]  # each once
    # Every way of reading it sees every task, as an eager view's tasks.
    for read in (
        list,
        len,
        lambda t: list(t.keys()),
        lambda t: [x.id for x in t.values()],
        lambda t: [k for k, _ in t.items()],
        lambda t: sorted(dict(t)),
        lambda t: sorted({**t}),
        lambda t: sorted(copy.copy(t)),
        lambda t: sorted(pickle.loads(pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL))),
        lambda t: rows[0].id in t,
        lambda t: json.dumps({str(k): v.task_name for k, v in t.items()}),
    ):
        fresh = build_workflow_view(wf, rows)
        expected = read(eager.tasks)
        got = read(fresh.tasks)
        if isinstance(expected, list) and expected and not isinstance(expected[0], uuid.UUID | str):
            expected, got = [x.id for x in expected], [x.id for x in got]
        assert got == expected
    changed = build_workflow_view(wf, rows)
    changed.tasks[uuid.uuid4()] = changed.tasks[rows[0].id]
    assert len(changed.tasks) == 3
    assert build_workflow_view(wf, rows).tasks.keys() == eager.tasks.keys()
    assert build_workflow_view(wf, rows).tasks != {}


def test_build_workflow_view_falls_back_when_the_workflow_class_is_gone() -> None:
    rows = [node(task_class="gone:Task")]
    view = build_workflow_view(workflow_row(template_class="gone:Workflow"), rows)
    assert type(view) is DefaultTemplateDAGInstance and type(view.tasks[rows[0].id]) is ExecutorTask
    with pytest.raises(TaskClassNotFound):
        build_workflow_view(workflow_row(template_class="gone:Workflow"), [], strict=True)


def test_hooks_mutate_the_view_runtime_parameters_in_place() -> None:
    wf = workflow_row()
    view = build_workflow_view(wf, [])
    task = build_task(node())
    asyncio.run(task.execute(view.runtime_parameters, view))
    assert wf.runtime_parameters == {"order_id": "o1", "charged": True}


# -- the task classes ---------------------------------------------------------------------------------------------------
def test_every_instance_gets_its_own_containers() -> None:
    a, b = ExecutorTask(), ExecutorTask()
    a.next_dags.append(uuid.uuid4())
    assert b.next_dags == []
    w1, w2 = DefaultTemplateDAGInstance(), DefaultTemplateDAGInstance()
    w1.runtime_parameters["x"] = 1
    w1.tasks[uuid.uuid4()] = a
    w1.sensor_tasks_to_correletable_map[uuid.uuid4()] = None  # type: ignore[assignment]
    assert w2.runtime_parameters == {} and w2.tasks == {} and w2.sensor_tasks_to_correletable_map == {}
    g1, g2 = ParallelCompositeTask(), ParallelCompositeTask()
    g1.parallel_child_task_list.append(uuid.uuid4())
    assert g2.parallel_child_task_list == []


def test_unknown_fields_are_rejected_and_class_attributes_survive_construction() -> None:
    with pytest.raises(TypeError, match="nonsense"):
        ExecutorTask(nonsense=1)
    listener = Ready(id=uuid.uuid4(), topic="t")
    assert listener.correlatable_key == "order_id" and listener.match_only_one is False


def test_status_assignment_accepts_enum_name_or_status() -> None:
    task = ExecutorTask()
    assert task.status == TaskStatusEnum.NOT_STARTED
    task.status = TaskStatusEnum.FAILURE
    assert task.status == TaskStatus(code="FAILURE", value="FAILURE") and task.status.code == "FAILURE"
    task.status = "completed"
    assert task.status == "COMPLETED" and task.status.is_terminal
    with pytest.raises(ValueError):
        task.status = "DONE"


def test_task_status_equality_is_by_code() -> None:
    assert TaskStatus(code="SKIPPED", value="whatever") == TaskStatus.of(TaskStatusEnum.SKIPPED)
    assert hash(TaskStatus.of("SKIPPED")) == hash(TaskStatus(code="SKIPPED", value="x"))
    assert TaskStatus.of("SKIPPED") != TaskStatus.of("STOPPED")


def test_retry_policy_defaults_are_class_attributes() -> None:
    assert (ExecutorTask.max_retries, ExecutorTask.retry_backoff, ExecutorTask.retry_backoff_max) == (
        0,
        1.0,
        300.0,
    )
    assert ExecutorTask.retry_on == (Exception,) and Charge.max_retries == 3


def test_default_hooks_work_from_sync_and_async_overrides() -> None:
    poll = Poll()
    result = poll.interval_execute({})
    assert result and resolve_hook_result(result) is True
    assert asyncio.run(_await(result)) is True
    assert asyncio.run(AsyncProcess().execute({}, None)) == "ran"
    assert inspect.isawaitable(ExecutorTask().stop({}, None))
    assert resolve_hook_result(DefaultMonitoringTask().process_monitored_task(ExecutorTask(), None)) is None
    assert HookResult(1) == 1


async def _await(value: Any) -> Any:
    return await value


def test_decision_evaluate_has_no_random_default() -> None:
    with pytest.raises(NotImplementedError):
        DecisionTask().evaluate(order_id="o1")


@pytest.mark.parametrize("method", ["start", "on_complete", "notify"])
def test_engine_only_methods_raise_instead_of_changing_state(method: str) -> None:
    task = ExecutorTask()
    with pytest.raises(NotImplementedError, match="engine"):
        getattr(task, method)(None)
    assert task.status == TaskStatusEnum.NOT_STARTED


def test_listener_key_hooks_wrap_the_simpler_one() -> None:
    listener = Ready()
    assert asyncio.run(listener.get_correlatable_keys_from_payload(("order_id", "o1"))) == [
        ("order_id", "o1")
    ]

    class AsyncKey(KafkaListenerTask[str, str]):
        async def get_correlatable_key_from_payload(self, payload: Any) -> Any:
            return ("order_id", payload["id"])

    assert asyncio.run(AsyncKey().get_correlatable_keys_from_payload({"id": 7})) == [("order_id", 7)]


def test_get_remaining_tasks_walks_a_view_without_changing_it() -> None:
    wid = uuid.uuid4()
    p1, e, s, p2, d = (uuid.uuid4() for _ in range(5))
    view = DefaultTemplateDAGInstance(id=wid, root_dag=p1)
    view.add_task(DefaultProcessTemplateDAGInstance(id=p1, root_dag=e, next_dags=[p2]))
    view.add_task(ExecutorTask(id=e, next_dags=[s]))
    view.add_task(KafkaListenerTask(id=s))
    view.add_task(DefaultProcessTemplateDAGInstance(id=p2, root_dag=d))
    view.add_task(ExecutorTask(id=d))
    walk = asyncio.run(view.get_remaining_tasks(p1, view, tasks=[]))
    assert [t.id for t in walk] == [e, s, p1, d, p2]
    until_s = asyncio.run(view.get_remaining_tasks(p1, view, tasks=[], end_task_id=s))
    assert [t.id for t in until_s] == [e, s]
    assert asyncio.run(view.get_remaining_tasks(p1, view)) is None
