"""Materialisation of templates into node specs (no database)."""

from __future__ import annotations

import contextvars
import random
import uuid
from typing import Any

import pytest

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DecisionTask,
    DecisionTaskTemplateBuilder,
    DefaultTaskTemplateBuilder,
    DefaultTemplateBuilder,
    DynamicProcessTemplateDagBuilder,
    ExecutorTask,
    IntervalTask,
    IntervalTaskTemplateBuilder,
    InvalidTemplate,
    InvalidTriggerTimeForTask,
    KafkaCommandTask,
    KafkaListenerTask,
    ParallelCompositeProcessTemplateDagBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TaskInvalidState,
    TaskOperator,
    TemplateDAG,
    TriggerTask,
    TriggerTaskTemplateBuilder,
)
from dagger_django.definitions.graph import Materialized, NodeSpec, materialize
from dagger_django.definitions.registry import _TopicMap


class Work(ExecutorTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class Order(KafkaCommandTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class Ready(KafkaListenerTask[str, str]):
    correlatable_key = "order_id"

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True


class Choose(DecisionTask[str, str]):
    def evaluate(self, **kwargs: Any) -> Any:
        return self.next_dags[-1]


class At(TriggerTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class Poll(IntervalTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Dagger, "template_dags", {})
    monkeypatch.setattr(Dagger, "process_templates", {})
    monkeypatch.setattr(Dagger, "topics", _TopicMap())
    monkeypatch.setattr(Dagger, "app", None)


APP = None
WID = uuid.UUID(int=1)


def executor(name: str = "work") -> Any:
    return DefaultTaskTemplateBuilder(APP).set_name(name).set_type(Work).build()


def process(name: str, root: Any = None, *, after: Any = None) -> Any:
    builder = ProcessTemplateDagBuilder(APP).set_name(name).set_root_task(root or executor(f"{name}_task"))
    if after is not None:
        builder.set_next_process(after)
    return builder.build()


def process_builder(name: str) -> ProcessTemplateDagBuilder:
    return ProcessTemplateDagBuilder(APP).set_name(name).set_root_task(executor(f"{name}_task"))


def workflow(root: Any, name: str = "WF") -> TemplateDAG:
    return DefaultTemplateBuilder(APP).set_name(name).set_root(root).build()


def run(template: TemplateDAG, params: dict[str, Any] | None = None, **kwargs: Any) -> Materialized:
    return materialize(template, workflow_id=WID, runtime_parameters=params or {}, **kwargs)


def by_name(result: Materialized) -> dict[str, NodeSpec]:
    return {n.name: n for n in result.nodes}


def process_chain(result: Materialized) -> list[str]:
    """Names of workflow-level nodes following the first successor from the root."""
    nodes = {n.id: n for n in result.nodes}
    names, current = [], nodes[result.root_ids[0]]
    while True:
        names.append(current.name.split(".", 1)[1])
        if not current.next_ids:
            return names
        current = nodes[current.next_ids[0]]


def pizza() -> TemplateDAG:
    helper = DAGBuilderHelper(APP)
    order_root = helper.build_and_link_tasks(
        [
            helper.generic_command_task_builder(
                topic="pizza_order_topic", task_type=Order, process_name="Order"
            ),
            helper.generic_listener_task_builder(topic="pizza_ready", task_type=Ready, process_name="Order"),
        ]
    )
    delivery_root = helper.build_and_link_tasks(
        [helper.generic_executor_task_builder(task_type=Work, name="Delivery")]
    )
    return helper.generic_template(
        template_name="PizzaWorkflow",
        root_process=helper.build_and_link_processes(
            [
                helper.generic_process_builder(process_name="Order", root_task=order_root),
                helper.generic_process_builder(process_name="Delivery", root_task=delivery_root),
            ]
        ),
    )


# -- the pizza workflow ---------------------------------------------------------------------------------
def test_pizza_workflow_materialises_processes_then_their_tasks() -> None:
    result = run(pizza(), {"order_id": "o1"})
    nodes = by_name(result)
    assert [n.name for n in result.nodes] == [
        "PizzaWorkflow.Order",
        "PizzaWorkflow.Order.Order_command_task",
        "PizzaWorkflow.Order.Order_listener_task",
        "PizzaWorkflow.Delivery",
        "PizzaWorkflow.Delivery.Delivery_executor_task",
    ]
    assert [n.position for n in result.nodes] == [0, 1, 2, 3, 4]
    order, command, listener = (
        nodes["PizzaWorkflow.Order"],
        nodes["PizzaWorkflow.Order.Order_command_task"],
        nodes["PizzaWorkflow.Order.Order_listener_task"],
    )
    delivery = nodes["PizzaWorkflow.Delivery"]
    assert result.root_ids == [order.id]
    assert order.parent_id is None and delivery.parent_id is None
    assert (order.node_type, order.kind) == ("SUB_DAG", "process")
    assert order.child_ids == [command.id] and order.next_ids == [delivery.id]
    assert command.parent_id == order.id and listener.parent_id == order.id
    assert command.next_ids == [listener.id] and listener.next_ids == []
    assert (command.kind, listener.kind) == ("command", "listener")
    assert command.task_class == f"{__name__}:Order"
    assert command.config == {
        "template_name": "Order_command_task",
        "allow_skip_to": False,
        "reprocess_on_message": False,
        "topic": "pizza_order_topic",
    }
    assert listener.config["topic"] == "pizza_ready" and listener.config["concurrency"] == 1
    assert listener.config["correlatable_key"] == "order_id"
    assert order.config["max_run_duration"] == 0
    assert len({n.id for n in result.nodes}) == 5


# -- ids ------------------------------------------------------------------------------------------------------
def test_the_same_seed_reproduces_the_same_ids() -> None:
    template = pizza()
    first = [n.id for n in run(template, seed="order-42").nodes]
    assert first == [n.id for n in run(template, seed="order-42").nodes]
    assert first == [n.id for n in run(template, seed=random.Random("order-42")).nodes]
    assert first != [n.id for n in run(template, seed="order-43").nodes]


def test_a_shared_random_gives_fresh_ids_on_each_draw() -> None:
    rng = random.Random("x")
    first, second = run(pizza(), seed=rng), run(pizza(), seed=rng)
    assert {n.id for n in first.nodes}.isdisjoint({n.id for n in second.nodes})


def test_unseeded_ids_are_time_ordered_uuid7() -> None:
    ids = [n.id for n in run(pizza()).nodes]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


# -- decisions ------------------------------------------------------------------------------------------------
def test_decision_with_two_successors_keeps_both_branches_as_alternatives() -> None:
    left, right = executor("left"), executor("right")
    decision = (
        DecisionTaskTemplateBuilder(APP)
        .set_type(Choose)
        .set_name("decide")
        .set_next(left)
        .set_next(right)
        .build()
    )
    result = run(workflow(process("P", decision)))
    nodes = by_name(result)
    d = nodes["WF.P.decide"]
    assert d.kind == "decision"
    assert d.next_ids == [nodes["WF.P.left"].id, nodes["WF.P.right"].id]
    assert nodes["WF.P.left"].parent_id == nodes["WF.P"].id == nodes["WF.P.right"].parent_id


# -- task-level parallel groups --------------------------------------------------------------------------------
def test_task_level_parallel_group_of_identical_templates_gets_distinct_nodes() -> None:
    same = DefaultTaskTemplateBuilder(APP).set_name("same").set_type(Work).set_next(executor("then")).build()
    extra = executor("extra")
    group = (
        ParallelCompositeTaskTemplateBuilder(APP, 3, same)
        .add_parallel_task(extra)
        .set_name("fan")
        .set_task_operator(TaskOperator.ATLEAST_ONE)
        .build()
    )
    result = run(workflow(process("P", group)))
    nodes = {n.id: n for n in result.nodes}
    fan = next(n for n in result.nodes if n.name == "WF.P.fan")
    assert (fan.node_type, fan.kind, fan.config["operator"]) == (
        "PARALLEL_COMPOSITE",
        "parallel",
        "ATLEAST_ONE",
    )
    assert len(fan.child_ids) == 4 and len(set(fan.child_ids)) == 4
    heads = [nodes[i] for i in fan.child_ids]
    assert [h.name for h in heads] == ["WF.P.fan.same"] * 3 + ["WF.P.fan.extra"]
    assert all(h.parent_id == fan.id for h in heads)
    # The successors of a head belong to the group too, as in the original.
    successors = [nodes[h.next_ids[0]] for h in heads[:3]]
    assert all(s.parent_id == fan.id and s.name == "WF.P.fan.then" for s in successors)
    assert len({s.id for s in successors}) == 3


# -- process-level parallel groups ---------------------------------------------------------------------------
def test_process_level_parallel_group_copies_its_operator() -> None:
    group = (
        ParallelCompositeProcessTemplateDagBuilder(APP)
        .set_name("Group")
        .set_type(ParallelCompositeTask)
        .set_parallel_operator_type(TaskOperator.ATLEAST_ONE)
        .set_parallel_process_templates(process("A"))
        .set_parallel_process_templates(process("B"))
        .set_next_process(process("After"))
        .build()
    )
    result = run(workflow(process("Start", after=group)))
    nodes = by_name(result)
    g = nodes["WF.Group"]
    assert (
        g.config["operator"] == "ATLEAST_ONE" and g.kind == "parallel" and g.node_type == "PARALLEL_COMPOSITE"
    )
    assert g.parent_id is None
    assert g.child_ids == [nodes["WF.Group.A"].id, nodes["WF.Group.B"].id]
    assert nodes["WF.Group.A"].parent_id == g.id
    assert nodes["WF.Group.A.A_task"].parent_id == nodes["WF.Group.A"].id
    assert g.next_ids == [nodes["WF.After"].id] and nodes["WF.After"].parent_id is None


def test_a_parallel_task_group_can_stand_where_a_process_is_expected() -> None:
    fan = ParallelCompositeTaskTemplateBuilder(APP, 2, executor("noop")).set_name("parallelTasks").build()
    group = (
        ParallelCompositeProcessTemplateDagBuilder(APP)
        .set_name("Shipping")
        .set_parallel_process_templates(process("S"))
        .set_next_process(fan)
        .build()
    )
    nodes = by_name(run(workflow(process("Start", after=group))))
    assert nodes["WF.parallelTasks"].parent_id is None
    assert nodes["WF.parallelTasks.noop"].parent_id == nodes["WF.parallelTasks"].id


def test_process_level_group_children_given_per_call_as_list_or_count() -> None:
    group = ParallelCompositeProcessTemplateDagBuilder(APP).set_name("Ship").build()
    template = workflow(process("Start", after=group))
    with pytest.raises(InvalidTemplate, match="WF > Start > Ship: parallel process group has zero children"):
        run(template)
    listed = by_name(run(template, parallel_process_templates={"Ship": [process("X"), process_builder("Y")]}))
    assert len(listed["WF.Ship"].child_ids) == 2
    counted = run(template, parallel_process_templates={"Ship": (4, process_builder("SHIPPING"))})
    ship = by_name(counted)["WF.Ship"]
    children = [n for n in counted.nodes if n.id in ship.child_ids]
    assert len(children) == 4 and {c.name for c in children} == {"WF.Ship.SHIPPING"}
    assert group.child_process_task_templates == []  # the template is untouched


def test_per_call_shape_for_an_unknown_name_is_rejected() -> None:
    template = workflow(process("Start"))
    with pytest.raises(InvalidTemplate, match="no parallel process group named 'Nope'"):
        run(template, parallel_process_templates={"Nope": [process("X")]})
    with pytest.raises(InvalidTemplate, match="no dynamic process named 'Nope'"):
        run(template, dynamic_process_builders={"Nope": [process_builder("X")]})


# -- dynamic processes -------------------------------------------------------------------------------------------
def dynamic_template() -> TemplateDAG:
    placeholder = (
        DynamicProcessTemplateDagBuilder(APP).set_name("PRE").set_next_process(process("FULFILL")).build()
    )
    return workflow(process("PAY", after=placeholder), name="OrderWorkflow")


def test_dynamic_builders_per_call_replace_the_placeholder_without_mutation() -> None:
    template = dynamic_template()
    digest = template.digest()
    b1, b2 = process_builder("PRE_1"), process_builder("PRE_2")
    result = run(template, dynamic_process_builders={"PRE": [b1, b2]})
    assert process_chain(result) == ["PAY", "PRE_1", "PRE_2", "FULFILL"]
    assert all(n.parent_id is None for n in result.nodes if n.kind == "process")
    assert b1.next_process_dag == [] and b2.next_process_dag == []
    assert template.digest() == digest
    assert len(template.get_given_process("PRE").next_process_dag) == 1


def test_reusing_the_same_dynamic_builders_twice_gives_the_same_shape() -> None:
    template = dynamic_template()
    builders = [process_builder("PRE_1"), process_builder("PRE_2")]
    first = run(template, dynamic_process_builders={"PRE": builders}, seed="s")
    second = run(template, dynamic_process_builders={"PRE": builders}, seed="s")
    assert [(n.name, n.next_ids, n.child_ids) for n in first.nodes] == [
        (n.name, n.next_ids, n.child_ids) for n in second.nodes
    ]


def test_dynamic_placeholder_without_builders_is_skipped_for_its_first_next_process() -> None:
    result = run(dynamic_template())
    assert process_chain(result) == ["PAY", "FULFILL"]
    assert not any("PRE" in n.name for n in result.nodes)


def test_dynamic_placeholder_with_neither_builders_nor_next_process_is_an_invalid_state() -> None:
    placeholder = DynamicProcessTemplateDagBuilder(APP).set_name("PRE").build()
    with pytest.raises(TaskInvalidState, match="PRE"):
        run(workflow(process("PAY", after=placeholder)))


# -- the seed's shape mutators (context variable) ---------------------------------------------------------------
def test_set_dynamic_builders_applies_to_the_next_creation_only() -> None:
    template = dynamic_template()
    template.set_dynamic_builders_for_process_template("PRE", [process_builder("PRE_1")])
    assert process_chain(run(template)) == ["PAY", "PRE_1", "FULFILL"]
    assert process_chain(run(template)) == ["PAY", "FULFILL"]


def test_recorded_shapes_stay_in_their_context() -> None:
    template = dynamic_template()

    def record() -> None:
        template.set_dynamic_builders_for_process_template("PRE", [process_builder("PRE_1")])

    contextvars.copy_context().run(record)
    assert process_chain(run(template)) == ["PAY", "FULFILL"]


def test_set_given_num_of_parallel_processes_records_n_copies() -> None:
    group = ParallelCompositeProcessTemplateDagBuilder(APP).set_name("ShippingCompositeProcess").build()
    template = workflow(process("Start", after=group))
    template.set_given_num_of_parallel_processes_for_a_composite_process(
        4, "ShippingCompositeProcess", process_builder("SHIPPING")
    )
    assert len(by_name(run(template))["WF.ShippingCompositeProcess"].child_ids) == 4
    assert group.child_process_task_templates == []
    with pytest.raises(InvalidTemplate, match="zero children"):
        run(template)


def test_set_parallel_process_templates_for_a_composite_records_the_list() -> None:
    group = (
        ParallelCompositeProcessTemplateDagBuilder(APP)
        .set_name("G")
        .set_parallel_process_templates(process("Own"))
        .build()
    )
    template = workflow(process("Start", after=group))
    template.set_parallel_process_template_dags_for_a_composite_process(
        "G", [process("X"), process("Y"), process("Z")]
    )
    assert len(by_name(run(template))["WF.G"].child_ids) == 3
    assert len(by_name(run(template))["WF.G"].child_ids) == 1


def test_process_level_shape_setters_are_recorded_not_applied() -> None:
    group = ParallelCompositeProcessTemplateDagBuilder(APP).set_name("G").build()
    placeholder = DynamicProcessTemplateDagBuilder(APP).set_name("D").set_next_process(group).build()
    template = workflow(process("Start", after=placeholder))
    placeholder.set_dynamic_process_builders([process_builder("Dyn")])
    group.set_parallel_process_template_dags([process("X"), process("Y")])
    nodes = by_name(run(template))
    assert "WF.Dyn" in nodes and len(nodes["WF.G"].child_ids) == 2
    assert group.child_process_task_templates == []


def test_shape_mutators_reject_unknown_or_wrong_process_names() -> None:
    template = dynamic_template()
    with pytest.raises(InvalidTemplate, match="no process named"):
        template.set_dynamic_builders_for_process_template("Missing", [])
    with pytest.raises(NotImplementedError):
        template.set_dynamic_builders_for_process_template("PAY", [])
    with pytest.raises(NotImplementedError):
        template.set_given_num_of_parallel_processes_for_a_composite_process(2, "PRE", process_builder("X"))


# -- trigger and interval values ---------------------------------------------------------------------------------
def trigger_template(key: str | None = "DEADLINE") -> TemplateDAG:
    builder = TriggerTaskTemplateBuilder(APP).set_type(At).set_name("wait")
    if key is not None:
        builder.set_time_to_execute_lookup_key(key)
    return workflow(process("P", builder.build()))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, 1_700_000_000),
        (1_700_000_000.9, 1_700_000_000.9),
        ("1700000000", 1_700_000_000),
        (0, 0),
    ],
)
def test_trigger_time_is_resolved_from_runtime_parameters(value: Any, expected: int) -> None:
    node = by_name(run(trigger_template(), {"DEADLINE": value}))["WF.P.wait"]
    assert node.kind == "trigger"
    assert node.config["time_to_execute"] == expected and node.config["time_to_execute_key"] == "DEADLINE"


def test_trigger_without_lookup_key_or_value_is_an_invalid_trigger_time() -> None:
    with pytest.raises(InvalidTriggerTimeForTask, match="no time to execute lookup key"):
        run(trigger_template(key=None), {"DEADLINE": 1})
    with pytest.raises(InvalidTriggerTimeForTask, match="'DEADLINE'.*missing"):
        run(trigger_template(), {})
    with pytest.raises(InvalidTriggerTimeForTask, match="missing"):
        run(trigger_template(), {"DEADLINE": None})


@pytest.mark.parametrize("value", ["soon", -5, True, [1], 1_700_000_000_000, float("nan")])
def test_trigger_time_must_be_a_valid_epoch_in_seconds(value: Any) -> None:
    with pytest.raises(InvalidTriggerTimeForTask, match="DEADLINE"):
        run(trigger_template(), {"DEADLINE": value})


def interval_template(start: str | None = None) -> TemplateDAG:
    builder = (
        IntervalTaskTemplateBuilder(APP)
        .set_type(Poll)
        .set_name("poll")
        .set_time_to_force_complete_lookup_key("DEADLINE")
        .set_interval_execute_period_lookup_key("interval")
    )
    if start is not None:
        builder.set_time_to_execute_lookup_key(start)
    return workflow(process("P", builder.build()))


def test_interval_values_are_resolved_and_the_start_is_optional() -> None:
    node = by_name(run(interval_template(), {"DEADLINE": 2_000_000_000, "interval": "10"}))["WF.P.poll"]
    assert node.kind == "interval"
    assert node.config["time_to_execute"] is None
    assert node.config["time_to_force_complete"] == 2_000_000_000
    assert node.config["interval_execute_period"] == 10
    assert node.config["interval_execute_period_key"] == "interval"
    started = by_name(
        run(interval_template("START"), {"START": 1_900_000_000, "DEADLINE": 2_000_000_000, "interval": 0.5})
    )
    assert started["WF.P.poll"].config["time_to_execute"] == 1_900_000_000
    assert started["WF.P.poll"].config["interval_execute_period"] == 0.5


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"interval": 10}, "DEADLINE"),
        ({"DEADLINE": 2_000_000_000}, "interval"),
        ({"DEADLINE": 2_000_000_000, "interval": 0}, "interval period"),
        ({"DEADLINE": 2_000_000_000, "interval": -3}, "interval period"),
        ({"DEADLINE": 2_000_000_000, "interval": "often"}, "interval period"),
        ({"DEADLINE": "later", "interval": 10}, "epoch"),
    ],
)
def test_interval_values_must_be_present_and_valid(params: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidTriggerTimeForTask, match=match):
        run(interval_template(), params)


def test_interval_start_key_set_but_missing_or_after_the_deadline_is_invalid() -> None:
    with pytest.raises(InvalidTriggerTimeForTask, match="START"):
        run(interval_template("START"), {"DEADLINE": 2_000_000_000, "interval": 5})
    with pytest.raises(InvalidTriggerTimeForTask, match="before the time to execute"):
        run(interval_template("START"), {"START": 2_000_000_001, "DEADLINE": 2_000_000_000, "interval": 5})


# -- robustness --------------------------------------------------------------------------------------------------------
def test_materialize_rejects_a_cycle_instead_of_recursing_forever() -> None:
    p = process("Loop")
    p.next_process_dag.append(p)
    with pytest.raises(InvalidTemplate, match="cycle"):
        run(workflow(p))


def test_materialize_rejects_runtime_parameters_that_are_not_a_mapping() -> None:
    from dagger_django import InvalidRuntimeParameters

    with pytest.raises(InvalidRuntimeParameters):
        materialize(pizza(), workflow_id=WID, runtime_parameters=[("a", 1)])  # type: ignore[arg-type]
