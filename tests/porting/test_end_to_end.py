"""The ported 0.2.6 module end to end: real Kafka (Tansu), a real bridge process, a real Celery worker.

Workflows are created the way a 0.2.6 agent created them, through the ``a``-twins; messages come
from Kafka (bytes produced by "another service") or through ``POST events/``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from rest_framework.test import APIClient

from dagger_django import Dagger
from dagger_django.models import InboxMessage, Status, Workflow
from tests.helpers import stored_nodes

from ..helpers import wait_for
from . import workflows as w

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
S = Status
URL = "/api/dagger/events/"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def node_status(workflow_id: Any, suffix: str) -> str:
    return stored_nodes.get(workflow_id=workflow_id, name__endswith=suffix).status


def wait_node(workflow_id: Any, suffix: str, status: str, timeout: float = 30) -> None:
    wait_for(
        lambda: node_status(workflow_id, suffix) == status,
        timeout=timeout,
        message=lambda: f"{suffix} to be {status} (it is {node_status(workflow_id, suffix)})",
    )


def finished(workflow_id: Any, timeout: float = 30) -> Workflow:
    terminal = {S.COMPLETED, S.FAILURE, S.STOPPED, S.SKIPPED}
    wait_for(
        lambda: Workflow.objects.filter(pk=workflow_id, status__in=terminal).exists(),
        timeout=timeout,
        message=lambda: f"workflow {workflow_id} to finish ({Workflow.objects.get(pk=workflow_id).status})",
    )
    return Workflow.objects.get(pk=workflow_id)


async def create_pizza_order(order_id: str) -> Any:
    """A 0.2.6 agent's body: create and submit (``create_instance``/``submit`` became a-twins)."""
    template = Dagger.get_template("PortPizzaWorkflow")
    instance = await template.acreate_instance(
        uuid.uuid4(), partition_key_lookup="order_id", order_id=order_id, customer_id="c9", pizza_type=3
    )
    return await Dagger.asubmit(instance, repartition=False)


def test_ported_pizza_workflow_over_kafka_hands_the_listener_bytes(porting_bridge: Any, kafka: Any) -> None:
    order = new_id("pizza")
    instance = async_to_sync(create_pizza_order)(order)
    command = kafka.read(w.ORDERS_TOPIC, lambda m: order.encode() in m.value())
    # value_type=str: the JSON text the task sent travels as it is
    assert command.value() == json.dumps({"order_id": order, "customer_id": "c9", "pizza_type": 3}).encode()
    wait_node(instance.id, "Order_listener_task", S.EXECUTING)

    kafka.send(w.READY_TOPIC, json.dumps({"order_id": order, "oven": 7}).encode(), key=order)
    wf = finished(instance.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["payload_type"] == "bytes"
    assert (wf.runtime_parameters["oven"], wf.runtime_parameters["delivered"]) == (7, True)


def test_ported_pizza_workflow_over_post_events(porting_bridge: Any, api: APIClient) -> None:
    order = new_id("pizza-http")
    instance = async_to_sync(create_pizza_order)(order)
    wait_node(instance.id, "Order_listener_task", S.EXECUTING)
    response = api.post(
        URL, {"topic": w.READY_TOPIC, "payload": {"order_id": order, "oven": 8}}, format="json"
    )
    assert response.status_code == 202, response.json()
    wf = finished(instance.id)
    assert wf.status == S.COMPLETED
    assert (wf.runtime_parameters["oven"], wf.runtime_parameters["payload_type"]) == (8, "bytes")


def test_ported_decision_then_listener_over_kafka(porting_bridge: Any, kafka: Any) -> None:
    order = new_id("pay")
    template = Dagger.get_template("PortPaymentWorkflow")
    instance = async_to_sync(template.acreate_instance)(
        partition_key_lookup="order_id", submit_task=True, order_id=order
    )
    charge = kafka.read(w.ORDERS_TOPIC, lambda m: m.key() == order.encode())
    assert json.loads(charge.value()) == {"charge": order}
    wait_node(instance.id, "PAYMENT_LISTENER_TASK", S.EXECUTING)
    kafka.send(w.PAYMENT_TOPIC, json.dumps({"order_id": order, "box_id": "box-1"}).encode(), key=order)
    wf = finished(instance.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["box_id"] == "box-1"
    assert node_status(wf.id, "PAYMENT_DECISION_TASK") == S.COMPLETED


def test_ported_monitored_process_with_interval_and_trigger_on_the_worker(porting_bridge: Any) -> None:
    template = Dagger.get_template("PortFulfillmentWorkflow")
    now = time.time()
    instance = async_to_sync(template.acreate_instance)(
        partition_key_lookup="order_id",
        submit_task=True,
        order_id=new_id("ful"),
        DEADLINE=int(now) + 4,
        interval=1,
        complete_by_time=now,
    )
    wf = finished(instance.id, timeout=40)
    assert wf.status == S.COMPLETED
    view = Dagger.get_instance(wf.id)
    process = next(t for t in view.tasks.values() if t.task_name.endswith("FULFILLMENT"))
    assert view.runtime_parameters["polled"] == 2
    assert view.runtime_parameters["tagged_late"] == str(process.id)
    assert Dagger.get_monitoring_task(process, view) is not None


async def create_shipping_order(order_id: str) -> Any:
    """The 0.2.6 agent: pick this order's preprocessing processes and its number of shipments."""
    template = Dagger.get_template("PortShippingWorkflow")
    template.set_dynamic_builders_for_process_template("ORDER_PREPROCESSING", w.preprocessing_builders())
    template.set_given_num_of_parallel_processes_for_a_composite_process(
        4, "ShippingCompositeProcess", w.shipping_process_builder()
    )
    instance = await template.acreate_instance(
        uuid.uuid4(), partition_key_lookup="order_id", order_id=order_id, box_id=f"box-{order_id}"
    )
    return await Dagger.asubmit(instance)


def test_ported_dynamic_parallel_and_copied_processes_on_the_worker(porting_bridge: Any) -> None:
    order = new_id("ship")
    instance = async_to_sync(create_shipping_order)(order)
    wf = finished(instance.id, timeout=40)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["preprocessed"] == 2  # both dynamic processes ran
    nodes = stored_nodes.filter(workflow_id=wf.id)
    assert nodes.filter(name__endswith="shipping_executor").count() == 4
    assert {n.status for n in nodes.filter(name__contains="Side")} == {S.COMPLETED}
    # ATLEAST_ONE: an executor branch wins, the listener branch is stopped
    assert node_status(wf.id, "BOX_LISTENER_TASK") == S.STOPPED


async def compose_and_stop(simple_id: str) -> Any:
    """The 0.2.6 agents: compose a workflow from a registered process, then stop it by instance."""
    template = w.on_the_fly_template()
    instance = await template.acreate_instance(
        uuid.uuid4(),
        partition_key_lookup="order_id",
        submit_task=True,
        simple_id=simple_id,
        order_id=simple_id,
    )
    return instance


def test_workflow_composed_on_the_fly_and_stopped_through_the_instance(
    porting_bridge: Any, kafka: Any
) -> None:
    done, stopped = new_id("fly"), new_id("fly")
    first = async_to_sync(compose_and_stop)(done)
    second = async_to_sync(compose_and_stop)(stopped)
    wait_node(first.id, "SIMPLE_LISTENER_TASK", S.EXECUTING)
    wait_node(second.id, "SIMPLE_LISTENER_TASK", S.EXECUTING)
    kafka.send(w.SIMPLE_TOPIC, json.dumps({"simple_id": [done]}).encode())
    assert finished(first.id).status == S.COMPLETED

    async def stop() -> Any:
        instance = await Dagger.aget_instance(second.id)
        return await instance.stop(runtime_parameters=instance.runtime_parameters, workflow_instance=instance)

    result = async_to_sync(stop)()
    assert result.status.code == "STOPPED"
    assert Workflow.objects.get(pk=second.id).status == S.STOPPED
    # The hooks of the running listener and of its process ran on the worker and sent these.
    for hook in ("listener", "process"):
        kafka.read(w.CANCELLED_TOPIC, lambda m, hook=hook: m.value() == f"{hook} {stopped}".encode())
    # A late message for the stopped workflow changes nothing.
    kafka.send(w.SIMPLE_TOPIC, json.dumps({"simple_id": [stopped]}).encode())
    wait_for(
        lambda: InboxMessage.objects.filter(topic=w.SIMPLE_TOPIC, raw__isnull=False).count() >= 2,
        timeout=30,
        message="the late message to be routed",
    )
    assert Workflow.objects.get(pk=second.id).status == S.STOPPED
