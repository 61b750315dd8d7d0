"""Builders, templates and template validation (no database)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DecisionTask,
    DecisionTaskTemplateBuilder,
    DefaultProcessTemplateDAGInstance,
    DefaultTaskTemplateBuilder,
    DefaultTemplateBuilder,
    DefaultTemplateDAGInstance,
    DynamicProcessTemplateDagBuilder,
    ExecutorTask,
    IntervalTask,
    IntervalTaskTemplateBuilder,
    InvalidTaskType,
    InvalidTemplate,
    KafkaCommandTask,
    KafkaCommandTaskTemplateBuilder,
    KafkaListenerTask,
    KafkaListenerTaskTemplateBuilder,
    ParallelCompositeProcessTemplateDagBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TaskOperator,
    TemplateDAG,
    TriggerTask,
    TriggerTaskTemplateBuilder,
)
from dagger_django.definitions.registry import _TopicMap


class Work(ExecutorTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class OtherWork(ExecutorTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class Command(KafkaCommandTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class Listener(KafkaListenerTask[str, str]):
    correlatable_key = "order_id"

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True


class Choose(DecisionTask[str, str]):
    def evaluate(self, **kwargs: Any) -> Any:
        return self.next_dags[0]


class At(TriggerTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class Poll(IntervalTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class ContinuingWorkflow(DefaultTemplateDAGInstance):
    failure_policy = "continue"


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Dagger, "template_dags", {})
    monkeypatch.setattr(Dagger, "process_templates", {})
    monkeypatch.setattr(Dagger, "topics", _TopicMap())
    monkeypatch.setattr(Dagger, "app", None)


APP = None


def executor(name: str = "work", cls: type = Work) -> Any:
    return DefaultTaskTemplateBuilder(APP).set_name(name).set_type(cls).build()


def process(name: str, root: Any, *, after: Any = None) -> Any:
    builder = ProcessTemplateDagBuilder(APP).set_name(name).set_root_task(root)
    if after is not None:
        builder.set_next_process(after)
    return builder.build()


def workflow(root: Any, name: str = "WF", template_type: type = DefaultTemplateDAGInstance) -> TemplateDAG:
    return DefaultTemplateBuilder(APP).set_name(name).set_type(template_type).set_root(root).build()


def pizza(*, command_cls: type = Command, allow_skip_to: bool = False, topic: str = "orders") -> TemplateDAG:
    helper = DAGBuilderHelper(APP)
    order_root = helper.build_and_link_tasks(
        [
            helper.generic_command_task_builder(topic=topic, task_type=command_cls, process_name="Order"),
            helper.generic_listener_task_builder(
                topic="ready", task_type=Listener, process_name="Order", allow_skip_to=allow_skip_to
            ),
        ]
    )
    delivery_root = helper.build_and_link_tasks(
        [helper.generic_executor_task_builder(task_type=Work, name="Delivery")]
    )
    first = helper.build_and_link_processes(
        [
            helper.generic_process_builder(process_name="Order", root_task=order_root),
            helper.generic_process_builder(process_name="Delivery", root_task=delivery_root),
        ]
    )
    return helper.generic_template(template_name="Pizza", root_process=first)


# -- InvalidTaskType rules (spec section 5) -----------------------------------------------------------
@pytest.mark.parametrize("bad", [Command, Listener])
def test_default_builder_rejects_kafka_command_and_listener_types(bad: type) -> None:
    with pytest.raises(InvalidTaskType):
        DefaultTaskTemplateBuilder(APP).set_type(bad)


@pytest.mark.parametrize("good", [Work, Choose])
def test_default_builder_accepts_executor_and_decision_types(good: type) -> None:
    assert DefaultTaskTemplateBuilder(APP).set_type(good).build().task_type is good


@pytest.mark.parametrize("bad", [Command, Listener])
def test_parallel_task_builder_rejects_kafka_types(bad: type) -> None:
    with pytest.raises(InvalidTaskType):
        ParallelCompositeTaskTemplateBuilder(APP, 1, executor()).set_type(bad)


@pytest.mark.parametrize("bad", [Work, Listener, Choose])
def test_command_builder_rejects_non_command_types(bad: type) -> None:
    with pytest.raises(InvalidTaskType):
        KafkaCommandTaskTemplateBuilder(APP).set_type(bad)


@pytest.mark.parametrize("bad", [Work, Command, Choose])
def test_listener_builder_rejects_non_listener_types(bad: type) -> None:
    with pytest.raises(InvalidTaskType):
        KafkaListenerTaskTemplateBuilder(APP).set_type(bad)


@pytest.mark.parametrize("bad", [Work, Command])
def test_decision_builder_rejects_non_decision_types(bad: type) -> None:
    with pytest.raises(InvalidTaskType):
        DecisionTaskTemplateBuilder(APP).set_type(bad)


@pytest.mark.parametrize("builder_cls", [TriggerTaskTemplateBuilder, IntervalTaskTemplateBuilder])
@pytest.mark.parametrize("bad", [Work, Command, Choose])
def test_trigger_and_interval_builders_reject_non_trigger_types(builder_cls: type, bad: type) -> None:
    with pytest.raises(InvalidTaskType):
        builder_cls(APP).set_type(bad)


@pytest.mark.parametrize("builder_cls", [TriggerTaskTemplateBuilder, IntervalTaskTemplateBuilder])
def test_trigger_and_interval_builders_accept_any_trigger_family_type(builder_cls: type) -> None:
    builder_cls(APP).set_type(At)
    builder_cls(APP).set_type(Poll)


@pytest.mark.parametrize(
    "builder",
    [
        lambda: DefaultTaskTemplateBuilder(APP),
        lambda: KafkaCommandTaskTemplateBuilder(APP),
        lambda: KafkaListenerTaskTemplateBuilder(APP),
        lambda: DecisionTaskTemplateBuilder(APP),
        lambda: TriggerTaskTemplateBuilder(APP),
    ],
)
def test_set_type_rejects_a_non_class(builder: Any) -> None:
    with pytest.raises(InvalidTaskType):
        builder().set_type(Work())


# -- chainable setters ----------------------------------------------------------------------------------
def test_task_builder_setters_are_chainable() -> None:
    t = executor()
    b = DefaultTaskTemplateBuilder(APP)
    assert (
        b.set_name("x") is b
        and b.set_type(Work) is b
        and b.set_next(t) is b
        and b.set_allow_skip_to(True) is b
    )
    c = KafkaCommandTaskTemplateBuilder(APP)
    assert c.set_topic("t") is c and c.set_type(Command) is c and c.set_name("c") is c
    d = DecisionTaskTemplateBuilder(APP)
    assert d.set_type(Choose) is d
    trig = TriggerTaskTemplateBuilder(APP)
    assert trig.set_time_to_execute_lookup_key("k") is trig and trig.set_type(At) is trig
    iv = IntervalTaskTemplateBuilder(APP)
    assert iv.set_time_to_force_complete_lookup_key("d") is iv
    assert iv.set_interval_execute_period_lookup_key("p") is iv
    par = ParallelCompositeTaskTemplateBuilder(APP, 1, t)
    assert par.add_parallel_task(t) is par and par.set_task_operator(TaskOperator.ATLEAST_ONE) is par


def test_listener_set_concurrency_returns_none_as_the_original_but_other_setters_chain() -> None:
    b = KafkaListenerTaskTemplateBuilder(APP)
    assert b.set_concurrency(3) is None
    assert b.set_topic("t") is b and b.set_type(Listener) is b and b.set_reprocess_on_message(True) is b
    template = b.set_name("l").build()
    assert template.concurrency == 3 and template.reprocess_on_message is True


def test_process_and_template_builder_setters_are_chainable() -> None:
    p = ProcessTemplateDagBuilder(APP)
    assert (
        p.set_name("p") is p
        and p.set_root_task(executor()) is p
        and p.set_type(DefaultProcessTemplateDAGInstance) is p
    )
    assert p.set_max_run_duration(5) is p and p.set_next_process(process("q", executor())) is p
    dyn = DynamicProcessTemplateDagBuilder(APP)
    assert (
        dyn.set_name("d") is dyn
        and dyn.set_max_run_duration(1) is dyn
        and dyn.set_next_process(p.build()) is dyn
    )
    par = ParallelCompositeProcessTemplateDagBuilder(APP)
    assert par.set_name("g") is par and par.set_type(ParallelCompositeTask) is par
    assert par.set_parallel_operator_type(TaskOperator.ATLEAST_ONE) is par
    assert par.set_parallel_process_templates(p.build()) is par and par.set_next_process(p.build()) is par
    t = DefaultTemplateBuilder(APP)
    assert t.set_name("w") is t and t.set_root(p.build()) is t and t.set_type(DefaultTemplateDAGInstance) is t
    assert t.set_failure_policy("continue") is t


def test_dynamic_and_parallel_process_builders_refuse_unsupported_setters() -> None:
    with pytest.raises(NotImplementedError):
        DynamicProcessTemplateDagBuilder(APP).set_root_task(executor())
    with pytest.raises(NotImplementedError):
        DynamicProcessTemplateDagBuilder(APP).set_type(DefaultProcessTemplateDAGInstance)
    with pytest.raises(NotImplementedError):
        ParallelCompositeProcessTemplateDagBuilder(APP).set_root_task(executor())
    with pytest.raises(NotImplementedError):
        ParallelCompositeProcessTemplateDagBuilder(APP).set_max_run_duration(3)


def test_builders_do_not_share_lists_between_built_templates() -> None:
    b = DefaultTaskTemplateBuilder(APP).set_name("a").set_type(Work)
    first = b.build()
    b.set_next(executor("later"))
    second = b.build()
    assert first.next_task_dag == [] and len(second.next_task_dag) == 1
    pb = ProcessTemplateDagBuilder(APP).set_name("p").set_root_task(first)
    p1 = pb.build()
    pb.set_next_process(process("q", executor()))
    assert p1.next_process_dag == [] and len(pb.build().next_process_dag) == 1
    par = ParallelCompositeTaskTemplateBuilder(APP, 2, first)
    g1 = par.build()
    par.add_parallel_task(second)
    assert len(g1.child_task_templates) == 2 and len(par.build().child_task_templates) == 3


@pytest.mark.parametrize(
    "topic",
    ["orders", SimpleNamespace(name="orders"), SimpleNamespace(topic_name="orders")],
    ids=["str", "name", "topic_name"],
)
def test_set_topic_stores_the_topic_name(topic: Any) -> None:
    template = KafkaCommandTaskTemplateBuilder(APP).set_type(Command).set_topic(topic).set_name("c").build()
    assert template.topic == "orders"


def test_set_topic_accepts_a_dagger_topic_and_rejects_garbage() -> None:
    topic = Dagger.create_topic("payments")
    assert KafkaListenerTaskTemplateBuilder(APP).set_topic(topic)._topic == "payments"
    with pytest.raises(InvalidTemplate):
        KafkaListenerTaskTemplateBuilder(APP).set_topic(42)


def test_listener_build_has_no_side_effects() -> None:
    before = dict(Dagger.topics)
    b = KafkaListenerTaskTemplateBuilder(APP).set_type(Listener).set_topic("somewhere").set_name("l")
    b.build()
    b.build()
    assert dict(Dagger.topics) == before


def test_parallel_task_builder_repeats_the_template_and_appends_added_tasks() -> None:
    t, extra = executor("same"), executor("extra")
    group = ParallelCompositeTaskTemplateBuilder(APP, 3, t).add_parallel_task(extra).set_name("g").build()
    assert group.child_task_templates == [t, t, t, extra]
    assert group.parallel_operator_type is TaskOperator.JOIN_ALL


# -- failure policy -------------------------------------------------------------------------------------
def test_failure_policy_defaults_to_the_template_type_class_attribute() -> None:
    root = process("p", executor())
    assert workflow(root).failure_policy == "halt"
    assert workflow(root, template_type=ContinuingWorkflow).failure_policy == "continue"
    explicit = DefaultTemplateBuilder(APP).set_name("w").set_root(root).set_failure_policy("continue").build()
    assert explicit.failure_policy == "continue"
    assert explicit.to_graph()["failure_policy"] == "continue"


@pytest.mark.parametrize("bad", ["stop", "", None, "HALT"])
def test_set_failure_policy_rejects_anything_but_halt_or_continue(bad: Any) -> None:
    with pytest.raises(InvalidTemplate):
        DefaultTemplateBuilder(APP).set_failure_policy(bad)


# -- validation: cycles -------------------------------------------------------------------------------------
def test_validate_rejects_a_task_cycle_and_names_the_path() -> None:
    a = executor("A")
    b = DefaultTaskTemplateBuilder(APP).set_name("B").set_type(Work).set_next(a).build()
    a.next_task_dag.append(b)  # A -> B -> A
    template = workflow(process("P", a))
    with pytest.raises(InvalidTemplate, match=r"cycle: WF > P > A > B > A"):
        template.validate()


def test_validate_rejects_a_process_chained_to_itself() -> None:
    p = process("Loop", executor())
    p.next_process_dag.append(p)
    with pytest.raises(InvalidTemplate, match="cycle: WF > Loop > Loop"):
        workflow(p).to_graph()


def test_a_shared_template_reached_twice_is_not_a_cycle() -> None:
    shared = executor("shared")
    template = workflow(process("P1", shared, after=process("P2", shared)))
    graph = template.to_graph()
    keys = [n["key"] for n in graph["nodes"]]
    assert keys == ["P1", "P1/shared", "P2"]
    assert graph["nodes"][2]["children"] == ["P1/shared"]


# -- validation: dangling references ---------------------------------------------------------------------
def test_validate_rejects_a_builder_given_instead_of_a_template() -> None:
    head = DefaultTaskTemplateBuilder(APP).set_name("A").set_type(Work)
    head.set_next(DefaultTaskTemplateBuilder(APP).set_name("B").set_type(Work))  # forgot .build()
    with pytest.raises(InvalidTemplate, match=r"WF > P > A: dangling reference .*\.build\(\)"):
        workflow(process("P", head.build())).validate()


def test_validate_rejects_a_process_with_no_root_task() -> None:
    p = ProcessTemplateDagBuilder(APP).set_name("Empty").build()
    with pytest.raises(InvalidTemplate, match="WF > Empty: process has no root task"):
        workflow(p).validate()


def test_validate_rejects_a_task_level_parallel_group_with_zero_children() -> None:
    group = ParallelCompositeTaskTemplateBuilder(APP, 0, executor()).set_name("G").build()
    with pytest.raises(InvalidTemplate, match="WF > P > G: parallel group has zero children"):
        workflow(process("P", group)).validate()


def test_validate_accepts_an_empty_process_level_group_whose_children_come_per_workflow() -> None:
    group = ParallelCompositeProcessTemplateDagBuilder(APP).set_name("Shipping").build()
    workflow(process("P", executor(), after=group)).validate()


def test_validate_rejects_command_and_listener_without_topic() -> None:
    command = KafkaCommandTaskTemplateBuilder(APP).set_type(Command).set_name("C").build()
    with pytest.raises(InvalidTemplate, match="WF > P > C: command task has no topic"):
        workflow(process("P", command)).validate()
    listener = KafkaListenerTaskTemplateBuilder(APP).set_type(Listener).set_name("L").build()
    with pytest.raises(InvalidTemplate, match="WF > P > L: listener task has no topic"):
        workflow(process("P", listener)).validate()


def test_validate_rejects_a_trigger_without_time_to_execute_key() -> None:
    trigger = TriggerTaskTemplateBuilder(APP).set_type(At).set_name("T").build()
    with pytest.raises(InvalidTemplate, match="WF > P > T: trigger task has no time-to-execute lookup key"):
        workflow(process("P", trigger)).validate()


def test_validate_rejects_an_interval_without_period_or_force_complete_key() -> None:
    no_period = (
        IntervalTaskTemplateBuilder(APP)
        .set_type(Poll)
        .set_name("I")
        .set_time_to_force_complete_lookup_key("d")
    )
    with pytest.raises(InvalidTemplate, match="interval period"):
        workflow(process("P", no_period.build())).validate()
    no_deadline = (
        IntervalTaskTemplateBuilder(APP)
        .set_type(Poll)
        .set_name("I")
        .set_interval_execute_period_lookup_key("p")
    )
    with pytest.raises(InvalidTemplate, match="force-complete"):
        workflow(process("P", no_deadline.build())).validate()


def test_validate_rejects_an_interval_class_in_a_trigger_template() -> None:
    template = (
        TriggerTaskTemplateBuilder(APP)
        .set_type(Poll)
        .set_name("T")
        .set_time_to_execute_lookup_key("k")
        .build()
    )
    with pytest.raises(InvalidTemplate, match="without period or force-complete key"):
        workflow(process("P", template)).validate()


def test_validate_rejects_types_of_the_wrong_family() -> None:
    with pytest.raises(InvalidTemplate, match="template type .* ITemplateDAGInstance"):
        workflow(process("P", executor()), template_type=Work).validate()
    bad_process = (
        ProcessTemplateDagBuilder(APP).set_name("P").set_root_task(executor()).set_type(Work).build()
    )
    with pytest.raises(InvalidTemplate, match="WF > P: process type Work"):
        workflow(bad_process).validate()
    not_a_task = DefaultTaskTemplateBuilder(APP).set_name("X").set_type(dict).build()
    with pytest.raises(InvalidTemplate, match="WF > P > X: task type dict is not a subclass of ITask"):
        workflow(process("P", not_a_task)).validate()
    group = ParallelCompositeProcessTemplateDagBuilder(APP).set_name("G").set_type(Work).build()
    with pytest.raises(InvalidTemplate, match="WF > G: parallel process group type Work"):
        workflow(group).validate()


def test_validate_rejects_a_template_without_root() -> None:
    with pytest.raises(InvalidTemplate, match="no root process"):
        DefaultTemplateBuilder(APP).set_name("WF").build().validate()


# -- graph and digest ---------------------------------------------------------------------------------------
def test_to_graph_is_json_ready_and_describes_every_node() -> None:
    graph = pizza().to_graph()
    json.dumps(graph)
    assert graph["name"] == "Pizza" and graph["root"] == "Order"
    assert graph["template_type"] == "dagger_django.definitions.tasks:DefaultTemplateDAGInstance"
    by_key = {n["key"]: n for n in graph["nodes"]}
    assert list(by_key) == [
        "Order",
        "Order/Order_command_task",
        "Order/Order_listener_task",
        "Delivery",
        "Delivery/Delivery_executor_task",
    ]
    command = by_key["Order/Order_command_task"]
    assert command["kind"] == "command" and command["node_type"] == "LEAF"
    assert command["task_class"] == f"{__name__}:Command"
    assert command["config"]["topic"] == "orders"
    assert command["next"] == ["Order/Order_listener_task"]
    assert by_key["Order/Order_listener_task"]["config"]["correlatable_key"] == "order_id"
    assert by_key["Order"]["children"] == ["Order/Order_command_task"] and by_key["Order"]["next"] == [
        "Delivery"
    ]


def test_digest_is_stable_across_two_builds() -> None:
    assert pizza().digest() == pizza().digest()


def test_digest_changes_when_a_class_or_an_option_changes() -> None:
    base = pizza().digest()

    class OtherCommand(KafkaCommandTask[str, str]):
        pass

    assert pizza(command_cls=OtherCommand).digest() != base
    assert pizza(allow_skip_to=True).digest() != base
    assert pizza(topic="orders_v2").digest() != base


# -- get_given_process ----------------------------------------------------------------------------------------
def test_get_given_process_finds_a_process_after_a_parallel_group() -> None:
    last = process("Last", executor())
    group = (
        ParallelCompositeProcessTemplateDagBuilder(APP)
        .set_name("Group")
        .set_parallel_process_templates(process("Child", executor()))
        .set_next_process(last)
        .build()
    )
    template = workflow(process("First", executor(), after=group))
    assert template.get_given_process("Last") is last
    assert template.get_given_process("Group") is group
    assert template.get_given_process("Child").name == "Child"
    assert template.get_given_process("Nope") is None


def test_get_given_process_searches_beyond_the_first_successor() -> None:
    second_branch = process("Second", executor())
    first = ProcessTemplateDagBuilder(APP).set_name("Start").set_root_task(executor())
    first.set_next_process(process("Other", executor()))
    first.set_next_process(second_branch)
    assert workflow(first.build()).get_given_process("Second") is second_branch


# -- helper ---------------------------------------------------------------------------------------------------
def test_helper_names_tasks_with_the_original_scheme() -> None:
    helper = DAGBuilderHelper(APP)
    assert helper.generic_executor_task_builder(task_type=Work, name="Ship").name == "Ship_executor_task"
    assert (
        helper.generic_command_task_builder(topic="t", task_type=Command, process_name="P").name
        == "P_command_task"
    )
    listener = helper.generic_listener_task_builder(
        topic="t2",
        task_type=Listener,
        process_name="P",
        allow_skip_to=True,
        concurrency=2,
        reprocess_on_message=True,
    ).build()
    assert listener.name == "P_listener_task" and listener.allow_skip_to and listener.concurrency == 2
    assert listener.reprocess_on_message and listener.topic == "t2"
    assert set(Dagger.topics) >= {"t", "t2"}


def test_helper_generic_template_accepts_a_failure_policy() -> None:
    helper = DAGBuilderHelper(APP)
    template = helper.generic_template(
        template_name="W", root_process=process("P", executor()), failure_policy="continue"
    )
    assert isinstance(template, TemplateDAG) and template.failure_policy == "continue"
    dyn = helper.generic_dynamic_process_builder(name="D", max_run_duration=9).build()
    assert dyn.name == "D" and dyn.max_run_duration == 9
    proc = helper.generic_process_builder(process_name="Q", root_task=executor(), max_run_duration=4).build()
    assert proc.process_type is DefaultProcessTemplateDAGInstance and proc.max_run_duration == 4
