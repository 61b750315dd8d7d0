"""End to end through real Kafka (Tansu), real bridge processes and a real Celery worker."""

from __future__ import annotations

import json
import signal
import uuid
from typing import Any

import pytest

from dagger_django import Dagger
from dagger_django.engine.outbox import MESSAGE_ID_HEADER
from dagger_django.models import Delivery, InboxMessage, InboxStatus, Status, Subscription, Workflow
from tests.helpers import stored_nodes

from ..faults.crashing_consumer import KILL_MESSAGE, crash_env
from ..helpers import wait_for
from . import workflows as w
from .conftest import start_bridge

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
S = Status


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create(template: str, **params: Any) -> Workflow:
    instance = Dagger.get_template(template).create_instance(
        submit_task=True, partition_key_lookup="order_id", **params
    )
    return Workflow.objects.get(pk=instance.id)


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


def inbox(topic: str, **filters: Any) -> list[InboxMessage]:
    return list(InboxMessage.objects.filter(topic=topic, **filters).order_by("id"))


# -- the seed's pizza workflow --------------------------------------------------------------------------------
def test_pizza_workflow_command_reply_and_delivery(bridge: Any, kafka: Any) -> None:
    order = new_id("pizza")
    wf = create("KafkaPizza", order_id=order, customer_id="c1", pizza_type=1)
    command = kafka.read("pizza_orders", lambda m: json.loads(m.value())["order_id"] == order)
    assert command.key() == order.encode()  # the business key
    assert json.loads(command.value()) == {"order_id": order, "customer_id": "c1", "pizza_type": 1}
    assert MESSAGE_ID_HEADER in dict(command.headers())
    wait_node(wf.id, "Order_listener_task", S.EXECUTING)

    kafka.send("pizza_ready", {"order_id": order}, key=order)
    wf = finished(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == [
        "Order_command_task",
        "Order_listener_task",
        "deliver_executor_task",
    ]
    assert not Subscription.objects.filter(workflow_id=wf.id).exists()
    [message] = inbox("pizza_ready", key=order)
    assert (message.status, message.matched, message.partition is not None) == (InboxStatus.ROUTED, 1, True)


def test_one_message_completes_two_workflows(bridge: Any, kafka: Any) -> None:
    first, second = new_id("many"), new_id("many")
    a, b = create("KafkaMany", order_id=first), create("KafkaMany", order_id=second)
    wait_node(b.id, "main_listener_task", S.EXECUTING)
    kafka.send("many_ready", {"order_ids": [first, second]})
    assert finished(a.id).status == finished(b.id).status == S.COMPLETED
    # Both listeners went to the worker in one dagger_django.run_nodes message (DISPATCH_BATCH):
    # the task after each listener ran inline under that message's id and the listener's place.
    leases = [
        stored_nodes.get(workflow_id=wf.id, name__endswith="deliver_executor_task").lease.rsplit(":", 1)
        for wf in (a, b)
    ]
    assert leases[0][0] == leases[1][0]
    assert sorted(position for _, position in leases) == ["0", "1"]


def test_allow_skip_to_jumps_over_the_first_listener(bridge: Any, kafka: Any) -> None:
    order = new_id("skip")
    wf = create("KafkaSkipTo", order_id=order)
    wait_node(wf.id, "first_listener_task", S.EXECUTING)
    kafka.send("skip_b", {"order_id": order})
    wf = finished(wf.id)
    assert wf.status == S.COMPLETED
    assert node_status(wf.id, "first_listener_task") == S.SKIPPED
    assert node_status(wf.id, "second_listener_task") == S.COMPLETED


def test_reprocess_on_message_calls_on_message_again(bridge: Any, kafka: Any) -> None:
    order = new_id("again")
    wf = create("KafkaReprocess", order_id=order)
    wait_node(wf.id, "main_listener_task", S.EXECUTING)
    kafka.send("reprocess_ready", {"order_id": order, "n": 1})
    assert finished(wf.id).status == S.COMPLETED
    kafka.send("reprocess_ready", {"order_id": order, "n": 2})
    wait_for(
        lambda: Workflow.objects.get(pk=wf.id).runtime_parameters.get("seen") == [1, 2],
        message=lambda: f"the second message ({Workflow.objects.get(pk=wf.id).runtime_parameters})",
    )
    assert Workflow.objects.get(pk=wf.id).runtime_parameters["trace"].count("deliver_executor_task") == 1


def test_an_early_reply_is_kept_until_its_listener_starts(bridge: Any, kafka: Any) -> None:
    order = new_id("early")
    wf = create("KafkaEarly", order_id=order)
    wait_node(wf.id, "first_listener_task", S.EXECUTING)
    kafka.send("early_b", {"order_id": order, "n": "b"})
    wait_for(
        lambda: Delivery.objects.filter(workflow_id=wf.id, status="buffered").exists(),
        message="the early message to be buffered",
    )
    assert node_status(wf.id, "second_listener_task") == S.NOT_STARTED
    kafka.send("early_a", {"order_id": order, "n": "a"})
    wf = finished(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["seen"] == ["a", "b"]


def test_a_duplicate_message_has_no_second_effect(bridge: Any, kafka: Any) -> None:
    order = new_id("dup")
    wf = create("KafkaCounted", order_id=order)
    wait_node(wf.id, "main_listener_task", S.EXECUTING)
    headers = {MESSAGE_ID_HEADER: f"id-{order}"}
    # Keyed by the order, as a producer of one business object does: one partition, so the
    # messages are consumed in the order sent (unkeyed, they could land on both partitions).
    kafka.send("counted", {"order_id": order, "n": 1}, key=order, headers=headers)
    kafka.send("counted", {"order_id": order, "n": 1}, key=order, headers=headers)  # a producer retry
    kafka.send("counted", {"order_id": order, "n": 2}, key=order)
    wait_for(
        lambda: Workflow.objects.get(pk=wf.id).runtime_parameters.get("seen") == [1, 2],
        message=lambda: f"two messages seen ({Workflow.objects.get(pk=wf.id).runtime_parameters})",
    )
    assert len(inbox("counted", key=order, payload__order_id=order)) == 2


def test_bad_input_becomes_dead_letters_and_the_bridge_goes_on(
    bridge: Any, kafka: Any, settings: Any
) -> None:
    order = new_id("bad")
    wf = create("KafkaBad", order_id=order)
    wait_node(wf.id, "main_listener_task", S.EXECUTING)
    tag = {"x-test": order}
    kafka.send("bad_ready", b"\x00\xffnot json at all", headers=tag)
    kafka.send("bad_ready", {"no_key": True}, headers=tag)
    kafka.send("bad_ready", {"order_id": {"not": "a scalar"}}, headers=tag)
    kafka.send("bad_ready", b'{"order_id": "' + b"x" * (1024 * 1024) + b'"}', headers=tag)
    kafka.send("bad_ready", {"order_id": order})
    assert finished(wf.id).status == S.COMPLETED
    bridge.assert_alive()
    dead = wait_for(
        lambda: (rows := inbox("bad_ready", headers__contains=tag)) and len(rows) == 4 and rows,
        message="four dead letters",
    )
    # Messages without a key may land on either partition: compare without order.
    assert sorted((m.status, m.reason) for m in dead) == [
        (InboxStatus.INVALID, "bad_key_type"),
        (InboxStatus.INVALID, "no_key"),
        (InboxStatus.INVALID, "not_json"),
        (InboxStatus.INVALID, "too_large"),
    ]
    [not_json] = [m for m in dead if m.reason == "not_json"]
    assert bytes(not_json.raw) == b"\x00\xffnot json at all"


# -- crash between routing and the offset commit ---------------------------------------------------------------
def test_bridge_killed_before_its_offset_commit_loses_and_doubles_nothing(
    celery_worker_process: Any, kafka: Any, kafka_topics: Any, tmp_path: Any
) -> None:
    orders = [new_id("crash") for _ in range(6)]
    workflows = [create("KafkaCrash", order_id=o) for o in orders]
    for wf in workflows:
        wait_node(wf.id, "main_listener_task", S.EXECUTING)
    for order in orders:
        kafka.send(w.CRASH_TOPIC, {"order_id": order, "n": order}, key=order)

    group = f"crash-{uuid.uuid4().hex[:8]}"
    crashing = start_bridge(
        celery_worker_process,
        kafka_topics,
        tmp_path,
        "--topics",
        w.CRASH_TOPIC,
        group=group,
        env=crash_env(1),
    )
    crashing.proc.wait(timeout=60)
    assert crashing.proc.returncode == -signal.SIGKILL, crashing.log_tail()
    assert KILL_MESSAGE in crashing.log(), crashing.log_tail()
    routed_before = InboxMessage.objects.filter(topic=w.CRASH_TOPIC).count()
    assert routed_before >= 1  # the first batch was committed to the database, not to Kafka

    assert not kafka.committed_to_end(group, w.CRASH_TOPIC)
    again = start_bridge(
        celery_worker_process, kafka_topics, tmp_path, "--topics", w.CRASH_TOPIC, group=group
    )
    try:
        wait_for(
            lambda: kafka.committed_to_end(group, w.CRASH_TOPIC), message="the restarted bridge to commit"
        )
        for wf in workflows:
            assert finished(wf.id).status == S.COMPLETED
        wait_for(
            lambda: InboxMessage.objects.filter(topic=w.CRASH_TOPIC).count() == len(orders),
            message="every message recorded once",
        )
    finally:
        assert again.stop() == 0, again.log_tail()
    for wf in workflows:
        wf = Workflow.objects.get(pk=wf.id)
        assert wf.runtime_parameters["seen"] == [wf.runtime_parameters["order_id"]]
        assert wf.runtime_parameters["trace"].count("deliver_executor_task") == 1
    assert Delivery.objects.filter(message__topic=w.CRASH_TOPIC).count() == len(orders)
    assert f"{routed_before} duplicates" in again.log_tail()


def test_once_reads_to_the_end_and_exits(
    celery_worker_process: Any, kafka: Any, kafka_topics: Any, tmp_path: Any
) -> None:
    kafka.send(w.CRASH_TOPIC, {"order_id": new_id("nobody")})
    process = start_bridge(celery_worker_process, kafka_topics, tmp_path, "--topics", w.CRASH_TOPIC, "--once")
    assert process.proc.wait(timeout=60) == 0, process.log_tail()
    assert "messages in" in process.log_tail()


def test_sigterm_stops_the_bridge_cleanly(
    celery_worker_process: Any, kafka_topics: Any, tmp_path: Any
) -> None:
    process = start_bridge(celery_worker_process, kafka_topics, tmp_path, "--topics", w.CRASH_TOPIC)
    process.wait_assigned()
    assert process.stop(signal.SIGTERM) == 0, process.log_tail()
    assert "stopping after the current batch" in process.log()


def test_health_reports_a_running_bridge(bridge: Any, client: Any, settings: Any) -> None:
    settings.DAGGER = {**settings.DAGGER, "KAFKA_GROUP_ID": bridge.group}
    response = client.get("/api/dagger/health/")
    assert response.json()["checks"]["bridge"] is True
