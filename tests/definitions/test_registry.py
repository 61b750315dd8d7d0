"""The Dagger facade: constructor, registries, topics and engine calls (engine faked, no database)."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import types
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import dagger_django
from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DaggerCompatibilityWarning,
    DefaultTaskTemplateBuilder,
    DefaultTemplateBuilder,
    DynamicProcessTemplateDagBuilder,
    ExecutorTask,
    InvalidTemplate,
    ProcessTemplateDagBuilder,
    TemplateDoesNotExist,
    WorkflowDoesNotExist,
)
from dagger_django.definitions import engine_door
from dagger_django.definitions.registry import Topic, _TopicMap


class Work(ExecutorTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Dagger, "template_dags", {})
    monkeypatch.setattr(Dagger, "process_templates", {})
    monkeypatch.setattr(Dagger, "topics", _TopicMap())
    monkeypatch.setattr(Dagger, "app", None)


@pytest.fixture
def engine() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """A stand-in for ``dagger_django.engine.services``, connected to the facade's door, that
    records every call."""
    calls: list[tuple[str, dict[str, Any]]] = []
    module = types.ModuleType("stand_in_engine")

    def recorder(name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            calls.append((name, kwargs))
            return f"{name}-result"

        return call

    for name in ("instance_create", "instance_submit", "workflow_instance", "instance_stop", "outbox_send"):
        setattr(module, name, recorder(name))
    previous = engine_door.connect(module)  # type: ignore[arg-type]
    yield calls
    engine_door.connect(previous)


def executor(name: str = "work") -> Any:
    return DefaultTaskTemplateBuilder(None).set_name(name).set_type(Work).build()


def process(name: str) -> Any:
    return ProcessTemplateDagBuilder(None).set_name(name).set_root_task(executor()).build()


def simple_template(name: str = "Simple", root: Any = None) -> Any:
    return DefaultTemplateBuilder(None).set_name(name).set_root(root or process("P")).build()


# -- constructor -------------------------------------------------------------------------------------------------
def test_constructor_keeps_the_original_signature_and_defaults() -> None:
    params = inspect.signature(Dagger).parameters
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params.values())
    expected: dict[str, Any] = {
        "broker": None,
        "store": "aerospike://",
        "application_name": "dagger",
        "kafka_partitions": 1,
        "tasks_topic": "dagger_task_topic",
        "bootstrap_topic": "dagger_bootstrap",
        "trigger_interval": 60,
        "max_tasks_per_trigger": 2000,
        "restart_tasks_on_boot": True,
        "enable_changelog": True,
        "max_correletable_keys_in_values": 15000,
        "delete_workflow_on_complete": False,
        "task_update_callbacks": [],
    }
    assert {name: params[name].default for name in expected} == expected
    assert list(params)[-1] == "kwargs"


def test_constructor_sets_dagger_app() -> None:
    app = Dagger()
    assert Dagger.app is app


def test_overrides_lists_only_explicitly_passed_meaningful_parameters() -> None:
    callback = print
    app = Dagger(broker="kafka://k1:9092", trigger_interval=5, task_update_callbacks=[callback])
    assert app.overrides() == {
        "trigger_interval": 5,
        "task_update_callbacks": [callback],
        "kafka_bootstrap_servers": "k1:9092",
    }
    assert Dagger.overrides() == app.overrides()


def test_overrides_include_a_default_value_when_it_was_passed_explicitly() -> None:
    assert Dagger(trigger_interval=60, delete_workflow_on_complete=False).overrides() == {
        "trigger_interval": 60,
        "delete_workflow_on_complete": False,
    }


def test_kafka_broker_list_wins_over_broker_and_lists_are_joined() -> None:
    app = Dagger(broker="kafka://ignored:1", kafka_broker_list=["kafka://a:9092", "b:9093"])
    assert app.overrides()["kafka_bootstrap_servers"] == "a:9092,b:9093"


def test_overrides_on_the_class_without_an_app_is_empty() -> None:
    assert Dagger.overrides() == {}


def test_the_settings_read_the_arguments_of_the_current_dagger(settings: Any) -> None:
    from dagger_django.conf import dagger_settings

    settings.DAGGER = {"TRIGGER_INTERVAL": 30.0, "MAX_TASKS_PER_TRIGGER": 7}
    Dagger(trigger_interval=5, delete_workflow_on_complete=True)
    assert (dagger_settings.TRIGGER_INTERVAL, dagger_settings.DELETE_WORKFLOW_ON_COMPLETE) == (5, True)
    assert dagger_settings.MAX_TASKS_PER_TRIGGER == 7
    Dagger.app = None  # the isolated_registry fixture puts the previous app back
    assert (dagger_settings.TRIGGER_INTERVAL, dagger_settings.DELETE_WORKFLOW_ON_COMPLETE) == (30.0, False)


def test_kafka_clients_use_the_servers_given_to_dagger_when_the_settings_name_none(settings: Any) -> None:
    from dagger_django.kafka.config import client_config

    settings.DAGGER = {"KAFKA": {"security.protocol": "SSL"}}
    Dagger(broker="kafka://k1:9092;k2:9092")
    assert client_config("consumer") == {"security.protocol": "SSL", "bootstrap.servers": "k1:9092,k2:9092"}
    settings.DAGGER = {"KAFKA": {"bootstrap.servers": "s:9092"}}
    assert client_config()["bootstrap.servers"] == "s:9092"


def test_parameters_without_effect_warn_only_when_not_default() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Dagger(store="aerospike://", datadir=None, enable_changelog=True, trigger_interval=10)
    with pytest.warns(DaggerCompatibilityWarning, match=r"datadir, store, enable_changelog, web_port"):
        app = Dagger(datadir="/tmp/x", store="rocksdb://", enable_changelog=False, web_port=6066)
    assert app.overrides() == {}
    assert app.kwargs == {"web_port": 6066}


# -- registration ---------------------------------------------------------------------------------------------------
def test_register_template_calls_the_function_now_and_returns_it() -> None:
    seen: list[str] = []

    @Dagger.register_template("Simple")
    def build(name: str) -> Any:
        seen.append(name)
        return simple_template(name)

    assert seen == ["Simple"]
    assert callable(build) and build.__name__ == "build"
    assert Dagger.get_template("Simple").name == "Simple"
    assert Dagger.template_dags["Simple"] is Dagger.get_template("Simple")


def test_register_template_surfaces_an_invalid_template_at_import() -> None:
    loop = process("Loop")
    loop.next_process_dag.append(loop)
    with pytest.raises(InvalidTemplate, match="cycle"):

        @Dagger.register_template("Broken")
        def build(name: str) -> Any:
            return simple_template(name, root=loop)

    assert "Broken" not in Dagger.template_dags


def test_register_template_rejects_a_function_returning_a_builder() -> None:
    with pytest.raises(InvalidTemplate, match="not a workflow template"):

        @Dagger.register_template("Unbuilt")
        def build(name: str) -> Any:
            return DefaultTemplateBuilder(None).set_name(name).set_root(process("P"))


def test_register_process_template_validates_and_stores_the_process() -> None:
    @Dagger.register_process_template("SimpleProcess")
    def build(name: str) -> Any:
        return process(name)

    assert Dagger.process_templates["SimpleProcess"].name == "SimpleProcess"
    with pytest.raises(InvalidTemplate, match="no root task"):

        @Dagger.register_process_template("Rootless")
        def rootless(name: str) -> Any:
            return ProcessTemplateDagBuilder(None).set_name(name).build()


def test_get_template_of_an_unknown_name_raises_template_does_not_exist() -> None:
    with pytest.raises(TemplateDoesNotExist):
        Dagger.get_template("unknown")


# -- topics ---------------------------------------------------------------------------------------------------------
def test_create_topic_returns_the_cached_topic_for_the_same_name() -> None:
    first = Dagger.create_topic("orders", key_type=bytes, value_type=str)
    assert isinstance(first, Topic) and first.name == "orders" and first.key_type is bytes
    assert Dagger.create_topic("orders", value_type=bytes) is first
    assert Dagger.get_topic("orders") is first


def test_get_topic_of_an_unknown_name_raises_key_error_but_topics_map_creates_it() -> None:
    with pytest.raises(KeyError):
        Dagger.get_topic("nowhere")
    assert Dagger.topics["only_in_template"].name == "only_in_template"
    custom = Topic("x")
    Dagger.add_topic("alias", custom)
    assert Dagger.get_topic("alias") is custom


def test_topic_send_writes_to_the_outbox(engine: list[tuple[str, dict[str, Any]]]) -> None:
    topic = Dagger.create_topic("pizza_order_topic")
    assert topic.send(key="o1", value={"a": 1}) == "outbox_send-result"
    assert engine == [
        ("outbox_send", {"topic": "pizza_order_topic", "key": "o1", "value": {"a": 1}, "headers": None})
    ]


def test_topic_send_is_awaitable_inside_an_event_loop(engine: list[tuple[str, dict[str, Any]]]) -> None:
    topic = Dagger.create_topic("t")

    async def hook() -> Any:
        first = await topic.send(value="v")
        second = await topic.asend(value="w", headers={"h": "1"})
        return first, second

    assert asyncio.run(hook()) == ("outbox_send-result", "outbox_send-result")
    assert [c[1]["value"] for c in engine] == ["v", "w"]


# -- engine facade ---------------------------------------------------------------------------------------------------
def test_submit_get_instance_and_stop_call_the_engine_with_a_uuid(
    engine: list[tuple[str, dict[str, Any]]],
) -> None:
    wid = uuid.uuid4()
    instance = types.SimpleNamespace(id=wid)
    assert Dagger.submit(instance, repartition=False) == "instance_submit-result"
    assert Dagger.get_instance(str(wid)) == "workflow_instance-result"
    assert Dagger.stop(wid) == "instance_stop-result"
    assert engine == [
        ("instance_submit", {"workflow_id": wid}),
        ("workflow_instance", {"workflow_id": wid}),
        ("instance_stop", {"workflow_id": wid}),
    ]


def test_async_twins_call_the_same_services(engine: list[tuple[str, dict[str, Any]]]) -> None:
    wid = uuid.uuid4()

    async def main() -> list[Any]:
        return [await Dagger.asubmit(wid), await Dagger.aget_instance(wid), await Dagger.astop(wid)]

    assert asyncio.run(main()) == [
        "instance_submit-result",
        "workflow_instance-result",
        "instance_stop-result",
    ]
    assert [c[0] for c in engine] == ["instance_submit", "workflow_instance", "instance_stop"]


def test_an_engine_call_before_the_app_is_ready_says_what_to_do() -> None:
    from django.core.exceptions import AppRegistryNotReady

    previous = engine_door.connect(None)
    try:
        with pytest.raises(AppRegistryNotReady, match=r"INSTALLED_APPS and call django.setup\(\)"):
            Dagger.submit(uuid.uuid4())
        with pytest.raises(AppRegistryNotReady):
            simple_template().create_instance()
    finally:
        engine_door.connect(previous)


def test_a_workflow_stops_itself_through_the_engine(engine: list[tuple[str, dict[str, Any]]]) -> None:
    wid = uuid.uuid4()
    view = dagger_django.DefaultTemplateDAGInstance(id=str(wid))
    assert asyncio.run(view.stop()) == "instance_stop-result"
    assert engine == [("instance_stop", {"workflow_id": wid})]


def test_a_malformed_workflow_id_raises_workflow_does_not_exist(
    engine: list[tuple[str, dict[str, Any]]],
) -> None:
    with pytest.raises(WorkflowDoesNotExist):
        Dagger.get_instance("not-a-uuid")
    assert engine == []


def test_create_instance_passes_runtime_parameters_and_options_to_the_engine(
    engine: list[tuple[str, dict[str, Any]]],
) -> None:
    template = simple_template()
    wid = uuid.uuid4()
    result = template.create_instance(
        wid, partition_key_lookup="order_id", repartition=True, seed="s", submit_task=True, order_id="o1", n=2
    )
    assert result == "instance_create-result"
    assert engine == [
        (
            "instance_create",
            {
                "template": template,
                "workflow_id": wid,
                "partition_key_lookup": "order_id",
                "runtime_parameters": {"order_id": "o1", "n": 2},
                "submit": True,
                "seed": "s",
                "dynamic_process_builders": None,
                "parallel_process_templates": None,
            },
        )
    ]


def test_create_instance_hands_recorded_shapes_to_the_engine_once(
    engine: list[tuple[str, dict[str, Any]]],
) -> None:
    placeholder = DynamicProcessTemplateDagBuilder(None).set_name("PRE").build()
    template = simple_template(
        root=ProcessTemplateDagBuilder(None)
        .set_name("P")
        .set_root_task(executor())
        .set_next_process(placeholder)
        .build()
    )
    builders = [ProcessTemplateDagBuilder(None).set_name("X").set_root_task(executor())]
    template.set_dynamic_builders_for_process_template("PRE", builders)
    template.create_instance()
    template.create_instance()
    assert engine[0][1]["dynamic_process_builders"] == {"PRE": tuple(builders)}
    assert engine[1][1]["dynamic_process_builders"] is None


def test_acreate_instance_uses_the_shape_recorded_in_the_calling_task(
    engine: list[tuple[str, dict[str, Any]]],
) -> None:
    placeholder = DynamicProcessTemplateDagBuilder(None).set_name("PRE").build()
    template = simple_template(
        root=ProcessTemplateDagBuilder(None)
        .set_name("P")
        .set_root_task(executor())
        .set_next_process(placeholder)
        .build()
    )
    builders = [ProcessTemplateDagBuilder(None).set_name("X").set_root_task(executor())]

    async def main() -> Any:
        template.set_dynamic_builders_for_process_template("PRE", builders)
        return await template.acreate_instance(None, "k", submit_task=True, k="v")

    assert asyncio.run(main()) == "instance_create-result"
    call = engine[0][1]
    assert call["dynamic_process_builders"] == {"PRE": tuple(builders)}
    assert (
        call["runtime_parameters"] == {"k": "v"}
        and call["submit"] is True
        and call["partition_key_lookup"] == "k"
    )


# -- package surface -------------------------------------------------------------------------------------------------
def test_every_public_name_is_exported_lazily() -> None:
    assert dagger_django.__version__ == "0.1.0"
    for name in dagger_django.__all__:
        assert getattr(dagger_django, name) is not None
    assert dagger_django.DAGBuilderHelper is DAGBuilderHelper
    with pytest.raises(AttributeError):
        dagger_django.NoSuchThing  # noqa: B018


def test_importing_the_package_does_not_import_django() -> None:
    code = (
        "import sys, dagger_django as d; d.Dagger; d.DAGBuilderHelper; d.ExecutorTask; "
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules), 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_project_root()))


def _project_root() -> Any:
    from pathlib import Path

    return Path(dagger_django.__file__).resolve().parent.parent
