"""The 0.2.6 calls a ported module makes, on the real database with the in-memory dispatcher:
``await instance.stop(...)``, processes' stop hooks, ``get_monitoring_task``, ``AerospikeConfig``,
``Dagger.main()``, runtime parameters that are UUIDs or dates, and sync calls made from async code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from dagger_django import (
    AerospikeConfig,
    Dagger,
    DaggerCompatibilityWarning,
    ExecutorTask,
    SyncCallInAsyncContext,
    TaskStatusEnum,
)
from dagger_django.models import OutboxMessage, Status, Workflow
from dagger_django.testing import FrozenClock, InMemoryDispatcher, engine_under_test
from tests.helpers import stored_nodes

from ..engine import builders as b
from . import workflows as w

pytestmark = pytest.mark.django_db(transaction=True)
S = Status


@pytest.fixture
def engine() -> Iterator[tuple[InMemoryDispatcher, FrozenClock]]:
    with engine_under_test() as pair:
        yield pair


@pytest.fixture
def dispatcher(engine: tuple[InMemoryDispatcher, FrozenClock]) -> InMemoryDispatcher:
    return engine[0]


def cancellations() -> list[str]:
    return sorted(bytes(r.value).decode() for r in OutboxMessage.objects.filter(topic=w.CANCELLED_TOPIC))


def statuses(workflow_id: Any) -> dict[str, str]:
    return {n.name.rsplit(".", 1)[-1]: n.status for n in stored_nodes.filter(workflow_id=workflow_id)}


# -- stop through the instance, with the hooks of running tasks and processes -------------------------
async def compose_and_stop(simple_id: str, drain: Any) -> tuple[Any, Any]:
    """What a 0.2.6 agent did: compose a template from a registered process, create, stop."""
    template = w.on_the_fly_template()
    instance = await template.acreate_instance(
        uuid.uuid4(),
        partition_key_lookup="order_id",
        submit_task=True,
        simple_id=simple_id,
        order_id=simple_id,
    )
    await drain()
    running = await Dagger.aget_instance(instance.id)
    stopped = await running.stop(runtime_parameters=running.runtime_parameters, workflow_instance=running)
    return running, stopped


def test_await_instance_stop_stops_the_workflow_and_runs_the_stop_hooks(
    dispatcher: InMemoryDispatcher,
) -> None:
    from asgiref.sync import sync_to_async

    simple_id = f"s-{uuid.uuid4().hex[:8]}"
    running, stopped = async_to_sync(compose_and_stop)(simple_id, sync_to_async(dispatcher.drain))
    assert Workflow.objects.get(pk=running.id).status == S.STOPPED
    assert stopped.status.code == TaskStatusEnum.STOPPED.value
    assert running.status.code == TaskStatusEnum.STOPPED.value  # the instance is refreshed too
    assert set(statuses(running.id).values()) == {S.STOPPED}
    dispatcher.drain()  # the stop hooks run on a worker, after commit
    # The listener was running, and so was its process: both hooks ran (spec 2.8).
    assert cancellations() == [f"listener {simple_id}", f"process {simple_id}"]


def test_stop_skips_the_hooks_of_processes_that_had_not_started(dispatcher: InMemoryDispatcher) -> None:
    template = w.on_the_fly_template()
    instance = template.create_instance(partition_key_lookup="order_id", simple_id="never", order_id="never")
    Dagger.stop(instance)  # NOT_STARTED: nothing was running
    dispatcher.drain()
    assert Workflow.objects.get(pk=instance.id).status == S.STOPPED
    assert cancellations() == []


# -- get_monitoring_task on a monitored process with interval and trigger tasks -------------------------
def test_monitored_process_with_interval_and_trigger_runs_and_get_monitoring_task_finds_its_monitor(
    engine: tuple[InMemoryDispatcher, FrozenClock],
) -> None:
    dispatcher, clock = engine
    now = clock.now().timestamp()
    template = Dagger.get_template("PortFulfillmentWorkflow")
    instance = template.create_instance(
        partition_key_lookup="order_id",
        submit_task=True,
        order_id="f-1",
        DEADLINE=int(now) + 3,
        interval=1,
        complete_by_time=now - 1,  # already late: the monitor's hook runs at once
    )
    dispatcher.drain()
    for _ in range(4):
        clock.advance(seconds=1)
        dispatcher.drain()
    wf = Workflow.objects.get(pk=instance.id)
    assert wf.status == S.COMPLETED, statuses(wf.id)
    view = Dagger.get_instance(instance.id)
    process = next(t for t in view.tasks.values() if t.task_name.endswith("FULFILLMENT"))
    assert view.runtime_parameters["tagged_late"] == str(process.id)
    assert view.runtime_parameters["polled"] == 2
    monitor = Dagger.get_monitoring_task(process, view)
    assert isinstance(monitor, w.LateOrderMonitoringTask)
    assert monitor.monitored_task_id == process.id
    assert async_to_sync(Dagger.aget_monitoring_task)(process, view) is not None
    interval = next(t for t in view.tasks.values() if t.task_name.endswith("FULFILLMENT_INTERVAL_TASK"))
    assert Dagger.get_monitoring_task(interval, view) is None  # not a monitored task


# -- names a 0.2.6 configuration module imports ---------------------------------------------------------
def test_aerospike_config_is_accepted_and_ignored_with_a_warning() -> None:
    config = AerospikeConfig(
        HOSTS=[("db", 3000)], POLICIES={}, NAMESPACE="ns", USERNAME="", PASSWORD="", TTL=-1
    )
    assert config.as_options()["namespace"] == "ns"
    previous = Dagger.app
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            app = Dagger(aerospike_config=config)
        assert [str(c.message) for c in caught if c.category is DaggerCompatibilityWarning] == [
            "Dagger(): these parameters have no effect in dagger_django and were ignored: aerospike_config"
        ]
        assert app.overrides() == {}
    finally:
        Dagger.app = previous


def test_dagger_main_exits_naming_the_processes_to_run_instead() -> None:
    with pytest.raises(SystemExit) as exited:
        Dagger.main()
    message = str(exited.value.code)
    for process in ("celery -A <project> worker", "celery -A <project> beat", "dagger_kafka_bridge"):
        assert process in message


# -- runtime parameter values Django's JSON encoder knows ------------------------------------------------
class StampsTheTime(ExecutorTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["shipped_at"] = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC)
        runtime_parameters["parcel"] = uuid.UUID(int=7)


def test_uuid_datetime_date_time_and_decimal_parameters_are_stored_as_django_encodes_them(
    dispatcher: InMemoryDispatcher,
) -> None:
    dag_id = uuid.uuid4()
    template = b.linear("PortValues", (StampsTheTime, "stamp"))
    instance = template.create_instance(
        dag_id,
        partition_key_lookup="dagId",
        submit_task=True,
        dagId=dag_id,
        created=dt.datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=dt.UTC),
        day=dt.date(2026, 12, 1),
        at=dt.time(9, 30),
        price=decimal.Decimal("12.50"),
        nested={"ids": [uuid.UUID(int=1)]},
    )
    dispatcher.drain()
    wf = Workflow.objects.get(pk=instance.id)
    assert wf.status == S.COMPLETED
    assert wf.business_key == str(dag_id)
    assert {k: wf.runtime_parameters[k] for k in ("dagId", "created", "day", "at", "price", "nested")} == {
        "dagId": str(dag_id),
        "created": "2026-12-01T09:00:00.123Z",
        "day": "2026-12-01",
        "at": "09:30:00",
        "price": "12.50",
        "nested": {"ids": [str(uuid.UUID(int=1))]},
    }
    # values a task sets come back as the same text
    assert wf.runtime_parameters["shipped_at"] == "2026-12-01T10:30:00Z"
    assert wf.runtime_parameters["parcel"] == str(uuid.UUID(int=7))


def test_a_value_no_encoder_knows_is_still_refused(dispatcher: InMemoryDispatcher) -> None:
    from dagger_django import InvalidRuntimeParameters

    template = b.linear("PortBadValue", (StampsTheTime, "stamp"))
    with pytest.raises(InvalidRuntimeParameters, match="cannot be stored as JSON"):
        template.create_instance(submit_task=True, thing=object())


# -- sync calls from async code -----------------------------------------------------------------------
def test_a_sync_engine_call_from_async_code_names_the_a_twin(dispatcher: InMemoryDispatcher) -> None:
    template = b.linear("PortSyncInAsync", (StampsTheTime, "stamp"))
    instance = template.create_instance()

    async def ported_agent() -> None:
        Dagger.get_instance(instance.id)  # 0.2.6 awaited app.get_instance: here aget_instance

    with pytest.raises(SyncCallInAsyncContext, match="await Dagger.aget_instance"):
        asyncio.run(ported_agent())

    async def creates() -> None:
        template.create_instance(order_id="o")

    with pytest.raises(SyncCallInAsyncContext, match="acreate_instance"):
        asyncio.run(creates())


def test_the_port_module_imports_with_its_0_2_6_configuration() -> None:
    # The module constructs Dagger with an AerospikeConfig and declares bytes topics; it imported.
    assert Dagger.topics[w.READY_TOPIC].value_type is bytes
    assert json.loads(json.dumps(w.aerospike_config.as_options()))["namespace"] == "test"
    assert time.time() > 0
