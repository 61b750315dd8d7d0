"""Correlation, listeners, commands and the outbox, on the real database with the in-memory dispatcher.

Messages are routed with ``engine.messages.messages_route`` (what the bridge calls for each batch)
and delivered by ``dispatcher.drain()`` (what a Celery worker does).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
)
from dagger_django.engine import correlation, messages, outbox, services
from dagger_django.exceptions import UnknownTopic
from dagger_django.models import (
    Delivery,
    DeliveryStatus,
    InboxMessage,
    InboxStatus,
    OutboxKind,
    OutboxMessage,
    Status,
    Subscription,
)
from tests.helpers import stored_nodes

from ..helpers import history
from . import listener_tasks as lt
from .conftest import reload, statuses

S = Status
helper = DAGBuilderHelper(dagger_app=Dagger.app)


# -- fixtures and helpers ------------------------------------------------------------------------------
@dataclass
class RecordingRelay:
    """An outbox relay that 'sends' by recording the rows (and marks them sent)."""

    sent: list[OutboxMessage] = field(default_factory=list)

    def relay(self, *, ids: list[int] | None = None, older_than: dt.datetime | None = None) -> int:
        def publish(rows: list[OutboxMessage]) -> dict[int, str | None]:
            self.sent.extend(rows)
            return {row.pk: None for row in rows}

        return outbox.outbox_relay(publish=publish, ids=ids, older_than=older_than)

    def values(self, topic: str) -> list[Any]:
        return [json.loads(bytes(row.value)) for row in self.sent if row.topic == topic]


@pytest.fixture(autouse=True)
def registry() -> Iterator[dict[str, Any]]:
    """Templates registered by a test are forgotten after it (routing reads the registry)."""
    saved = dict(Dagger.template_dags)
    yield Dagger.template_dags
    Dagger.template_dags.clear()
    Dagger.template_dags.update(saved)


@pytest.fixture
def relay(engine: Any) -> Iterator[RecordingRelay]:
    recording = RecordingRelay()
    outbox.set_relay(recording)
    yield recording
    outbox.reset_relay()


def register(template: Any) -> Any:
    Dagger.template_dags[template.name] = template
    return template


def listener(cls: type, name: str, topic: str = "pizza_ready", **kwargs: Any) -> Any:
    return helper.generic_listener_task_builder(topic=topic, task_type=cls, process_name=name, **kwargs)


def executor(cls: type, name: str) -> Any:
    return helper.generic_executor_task_builder(task_type=cls, name=name)


def process(name: str, *builders: Any) -> Any:
    return helper.generic_process_builder(
        process_name=name, root_task=helper.build_and_link_tasks(list(builders))
    )


def template(name: str, *processes: Any) -> Any:
    root = helper.build_and_link_processes(list(processes))
    return register(helper.generic_template(template_name=name, root_process=root))


def pizza(name: str, cls: type = lt.Ready, command: type = lt.OrderPizza, **kwargs: Any) -> Any:
    """The seed's pizza workflow: Order (command -> listener), then Delivery (executor)."""
    order = helper.generic_command_task_builder(topic="pizza_orders", task_type=command, process_name="order")
    return template(
        name,
        process("Order", order, listener(cls, "order", **kwargs)),
        process("Delivery", executor(lt.Deliver, "deliver")),
    )


def two_listeners(name: str, *, second: type = lt.Ready, **second_kwargs: Any) -> Any:
    """P[first (topic_a) -> second (topic_b)] then P[Delivery]: scenario S3/S4 of the spec."""
    return template(
        name,
        process(
            "main",
            listener(lt.Ready, "first", topic="topic_a"),
            listener(second, "second", topic="topic_b", **second_kwargs),
        ),
        process("Delivery", executor(lt.Deliver, "deliver")),
    )


_offsets: dict[str, int] = {}


def route(topic: str, payload: Any, **kwargs: Any) -> messages.Routed:
    """Route one message as the bridge would (a fresh Kafka offset unless one is given)."""
    if "offset" not in kwargs and "message_id" not in kwargs:
        _offsets[topic] = _offsets.get(topic, 0) + 1
        kwargs.update(partition=0, offset=_offsets[topic])
    return messages.messages_route([messages.Incoming(topic=topic, payload=payload, **kwargs)])[0]


def start(tmpl: Any, dispatcher: Any, **params: Any) -> Any:
    lookup = "order_id" if "order_id" in params else None  # naming a missing parameter is an error
    wf = tmpl.create_instance(submit_task=True, partition_key_lookup=lookup, **params)
    dispatcher.drain()
    return wf


# -- the index ---------------------------------------------------------------------------------------
def test_the_topic_map_follows_templates_replaced_under_the_same_name() -> None:
    # A replaced template is freed and its address is soon reused by the next one: the map of
    # topics must not be taken for the old registry's (a key of ids once made it stale).
    for i in range(50):
        topic = f"swap_{i}"
        template("Swapped", process("p", listener(lt.Ready, "w", topic=topic)))
        assert correlation.topic_listeners(topic) is not None
        assert correlation.topic_listeners(f"swap_{i - 1}") is None


def test_subscription_is_written_when_the_workflow_is_created(dispatcher: Any) -> None:
    wf = pizza("SubCreated").create_instance(order_id="o1")
    sub = Subscription.objects.get(workflow_id=wf.id)
    assert (sub.topic, sub.key_name, sub.key_value) == ("pizza_ready", "order_id", "o1")
    assert statuses(wf.id)["order_listener_task"] == S.NOT_STARTED


def test_correlation_values_of_equal_json_match() -> None:
    assert correlation.correlation_value(5) == correlation.correlation_value(5.0) == "5"
    assert correlation.correlation_value("5") == "5"
    assert correlation.correlation_value(True) == "true"
    assert correlation.correlation_value("x" * 500).startswith("sha256:")
    with pytest.raises(correlation.BadKey):
        correlation.correlation_value({"a": 1})


# -- the pizza workflow: command, listener, delivery --------------------------------------------------
def test_pizza_command_then_reply_completes_the_workflow(dispatcher: Any, relay: RecordingRelay) -> None:
    wf = start(pizza("Pizza"), dispatcher, order_id="o1", customer_id="c1")
    s = statuses(wf.id)
    assert s["order_command_task"] == S.COMPLETED
    assert s["order_listener_task"] == S.EXECUTING
    assert s["Delivery"] == S.NOT_STARTED
    [command] = [row for row in relay.sent if row.topic == "pizza_orders"]
    assert json.loads(bytes(command.value)) == {"order_id": "o1", "by": "order_command_task"}
    assert bytes(command.key) == b"o1"  # the business key
    command.refresh_from_db()
    assert command.kind == OutboxKind.COMMAND and command.sent_at is not None

    result = route("pizza_ready", {"order_id": "o1", "n": 1})
    assert (result.status, result.matched) == ("routed", 1)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["seen"] == [["order_listener_task", 1]]
    assert wf.runtime_parameters["trace"] == ["deliver_executor_task"]
    assert not Subscription.objects.filter(workflow_id=wf.id).exists()
    assert Delivery.objects.get().status == DeliveryStatus.DELIVERED


def test_async_command_sends_with_its_own_key_and_headers(dispatcher: Any, relay: RecordingRelay) -> None:
    start(pizza("AsyncPizza", command=lt.AsyncOrderPizza), dispatcher, order_id="o2")
    [row] = [r for r in relay.sent if r.topic == "pizza_orders"]
    assert bytes(row.key) == b"explicit"
    assert row.headers == [["h", "v"]]


def test_a_command_whose_task_failed_is_never_sent(dispatcher: Any, relay: RecordingRelay) -> None:
    wf = start(pizza("FailingCommand", command=lt.SendsThenFails), dispatcher, order_id="o3")
    assert reload(wf.id).status == S.FAILURE
    assert not OutboxMessage.objects.exists()
    assert relay.sent == []


def test_send_outside_a_task_is_written_at_once_and_relayed(relay: RecordingRelay) -> None:
    sent = Dagger.create_topic("outside").send(key=7, value={"hello": "world"})
    row = OutboxMessage.objects.get()
    assert row.kind == OutboxKind.SEND and row.message_id == sent.message_id
    assert bytes(row.key) == b"7" and row.sent_at is not None and row.attempts == 1
    assert relay.values("outside") == [{"hello": "world"}]


def test_unsent_outbox_rows_are_sent_by_the_sweep(engine: Any, clock: Any) -> None:
    outbox.set_relay(None)
    try:
        Dagger.create_topic("later").send(value="text")
    finally:
        outbox.reset_relay()
    recording = RecordingRelay()
    outbox.set_relay(recording)
    try:
        clock.advance(seconds=60)
        assert messages.messages_sweep().relayed == 1
        assert messages.messages_sweep().relayed == 0
    finally:
        outbox.reset_relay()
    assert [bytes(r.value) for r in recording.sent] == [b"text"]


# -- on_message -------------------------------------------------------------------------------------------
def test_on_message_false_keeps_waiting_and_keeps_its_parameter_changes(dispatcher: Any, relay: Any) -> None:
    wf = start(pizza("NotYet"), dispatcher, order_id="o4")
    route("pizza_ready", {"order_id": "o4", "n": 1, "done": False})
    dispatcher.drain()
    assert statuses(wf.id)["order_listener_task"] == S.EXECUTING
    assert reload(wf.id).runtime_parameters["seen"] == [["order_listener_task", 1]]
    route("pizza_ready", {"order_id": "o4", "n": 2})
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["seen"] == [["order_listener_task", 1], ["order_listener_task", 2]]
    assert len(history(wf.id, "message_received")) == 2


def test_on_message_returning_a_non_bool_fails_the_listener(dispatcher: Any, relay: Any) -> None:
    wf = start(pizza("NonBool", cls=lt.ReturnsText), dispatcher, order_id="o5")
    route("pizza_ready", {"order_id": "o5"})
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.FAILURE
    assert statuses(wf.id)["order_listener_task"] == S.FAILURE
    assert "InvalidTaskResult" in wf.error
    assert Delivery.objects.get().outcome == "invalid_result"


def test_on_message_raising_fails_the_listener_without_retries(dispatcher: Any, relay: Any) -> None:
    wf = start(pizza("Raising", cls=lt.Raises), dispatcher, order_id="o6")
    route("pizza_ready", {"order_id": "o6"})
    dispatcher.drain()
    assert statuses(wf.id)["order_listener_task"] == S.FAILURE
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and "cannot handle" in delivery.error


def test_a_message_for_a_halted_listener_is_kept_and_delivered_after_the_retry(
    dispatcher: Any, relay: Any
) -> None:
    wf = start(pizza("HaltedListener", cls=lt.RaisesOnBad), dispatcher, order_id="o8")
    route("pizza_ready", {"order_id": "o8", "bad": True, "n": 1})
    dispatcher.drain()
    assert reload(wf.id).status == S.FAILURE
    assert statuses(wf.id)["order_listener_task"] == S.FAILURE
    route("pizza_ready", {"order_id": "o8", "n": 2})  # arrives while the workflow is halted
    dispatcher.drain()
    kept = Delivery.objects.order_by("id").last()
    assert kept.status == DeliveryStatus.BUFFERED
    services.workflow_retry(workflow_id=wf.id)
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["seen"] == [["order_listener_task", 2]]
    assert Delivery.objects.get(pk=kept.pk).status == DeliveryStatus.DELIVERED


def test_a_message_for_a_failed_listener_of_a_continuing_workflow_is_ignored(
    dispatcher: Any, relay: Any
) -> None:
    order = helper.generic_command_task_builder(
        topic="pizza_orders", task_type=lt.OrderPizza, process_name="order"
    )
    tmpl = register(
        helper.generic_template(
            template_name="ContinuingListener",
            root_process=helper.build_and_link_processes(
                [
                    process("Order", order, listener(lt.RaisesOnBad, "order")),
                    process("Wait", listener(lt.Ready, "later", topic="topic_z")),
                ]
            ),
            failure_policy="continue",
        )
    )
    wf = start(tmpl, dispatcher, order_id="o9")
    route("pizza_ready", {"order_id": "o9", "bad": True})
    dispatcher.drain()
    assert reload(wf.id).status == S.EXECUTING  # "continue": the next process waits
    route("pizza_ready", {"order_id": "o9", "n": 2})
    dispatcher.drain()
    assert Delivery.objects.order_by("id").last().outcome == "listener_failure"


def test_on_message_raising_is_retried_per_the_class_policy(dispatcher: Any, clock: Any, relay: Any) -> None:
    wf = start(pizza("Retried", cls=lt.RetriedOnce), dispatcher, order_id="o7")
    route("pizza_ready", {"order_id": "o7"})
    dispatcher.drain()
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.PENDING and delivery.outcome == "retry_scheduled"
    assert statuses(wf.id)["order_listener_task"] == S.EXECUTING
    clock.advance(seconds=1)
    assert messages.deliveries_redispatch() == 0  # not due yet
    clock.advance(seconds=2)
    assert messages.deliveries_redispatch() == 1
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["attempts"] == [2]  # the failed attempt's changes were dropped


def test_async_on_message_can_send_a_message(dispatcher: Any, relay: RecordingRelay) -> None:
    wf = start(pizza("Replies", cls=lt.RepliesOnMessage), dispatcher, order_id="o8")
    route("pizza_ready", {"order_id": "o8"})
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    assert relay.values("kitchen") == [{"ack": "o8"}]
    [row] = [r for r in relay.sent if r.topic == "kitchen"]
    assert bytes(row.key) == b"o8" and row.node_id is not None


# -- matching ------------------------------------------------------------------------------------------
def test_one_message_completes_two_workflows(dispatcher: Any, relay: Any) -> None:
    tmpl = pizza("Many", cls=lt.ManyOrders)
    first = start(tmpl, dispatcher, order_id="m1")
    second = start(tmpl, dispatcher, order_id="m2")
    other = start(tmpl, dispatcher, order_id="m3")
    result = route("pizza_ready", {"order_ids": ["m1", "m2"], "batch": 9})
    assert result.matched == 2
    dispatcher.drain()
    assert reload(first.id).status == reload(second.id).status == S.COMPLETED
    assert reload(first.id).runtime_parameters["batch"] == 9
    assert reload(other.id).status == S.EXECUTING


def test_the_key_name_takes_part_in_matching(dispatcher: Any, relay: Any) -> None:
    by_order = template("ByOrder", process("p", listener(lt.ReadyByDefault, "wait", topic="shared")))
    by_customer = template("ByCustomer", process("p", listener(lt.ByCustomer, "wait", topic="shared")))
    a = start(by_order, dispatcher, order_id="k1")
    b = start(by_customer, dispatcher, customer_id="k1")
    assert route("shared", {"customer_id": "k1", "n": 1}).matched == 1
    dispatcher.drain()
    assert reload(b.id).status == S.COMPLETED
    assert reload(a.id).status == S.EXECUTING


def test_numbers_and_their_text_match(dispatcher: Any, relay: Any) -> None:
    wf = start(pizza("Numbers"), dispatcher, order_id=42)
    assert route("pizza_ready", {"order_id": "42"}).matched == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_match_only_one_delivers_to_the_first_registered_listener(dispatcher: Any, relay: Any) -> None:
    tmpl = pizza("OnlyOne", cls=lt.OnlyOne)
    first = start(tmpl, dispatcher, order_id="same")
    second = start(tmpl, dispatcher, order_id="same")
    assert route("pizza_ready", {"order_id": "same"}).matched == 1
    dispatcher.drain()
    assert reload(first.id).status == S.COMPLETED
    assert reload(second.id).status == S.EXECUTING
    assert route("pizza_ready", {"order_id": "same"}).matched == 1
    dispatcher.drain()
    assert reload(second.id).status == S.COMPLETED


def test_unmatched_and_unknown_topics_are_recorded(dispatcher: Any) -> None:
    pizza("Unmatched")
    result = route("pizza_ready", {"order_id": "nobody"})
    assert (result.status, result.matched) == (InboxStatus.UNMATCHED, 0)
    assert InboxMessage.objects.get(pk=result.inbox_id).reason == "no_subscription"
    unknown = route("no_such_topic", {"order_id": "x"})
    assert (unknown.status, unknown.reason) == (InboxStatus.UNMATCHED, "no_listener")
    with pytest.raises(UnknownTopic):
        messages.message_receive(topic="no_such_topic", payload={})


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"other": 1}, "no_key"),
        ({"order_id": None}, "no_key"),
        ({"order_id": ["a", "b"]}, "bad_key_type"),
        ({"order_id": {"nested": 1}}, "bad_key_type"),
        ("just text", "no_key"),
    ],
)
def test_payloads_without_a_usable_key_are_dead_letters(dispatcher: Any, payload: Any, reason: str) -> None:
    template("BadKeys", process("p", listener(lt.ReadyByDefault, "wait", topic="bad")))
    result = route("bad", payload)
    assert (result.status, result.reason) == (InboxStatus.INVALID, reason)
    row = InboxMessage.objects.get(pk=result.inbox_id)
    assert row.status == InboxStatus.INVALID and row.detail


def test_undecodable_bytes_are_dead_letters_that_keep_their_bytes(dispatcher: Any) -> None:
    pizza("Bytes")
    for raw, reason in [(b"\xff\xfe not json", "not_json"), (b"{bad json", "not_json"), (b"NaN", "not_json")]:
        payload, why, detail = messages.decode_json(raw)
        assert why == reason and detail
        result = route("pizza_ready", None, raw=raw, invalid=why, detail=detail)
        row = InboxMessage.objects.get(pk=result.inbox_id)
        assert (row.status, row.reason, bytes(row.raw)) == (InboxStatus.INVALID, reason, raw)


def test_oversized_and_nul_payloads_are_refused(dispatcher: Any, settings: Any) -> None:
    pizza("Sizes")
    settings.DAGGER = {"MAX_MESSAGE_BYTES": 100}
    assert messages.decode_json(b"[" + b"1," * 100 + b"1]")[1] == "too_large"
    assert messages.decode_json(b'{"order_id": "a\\u0000b"}')[1] == "nul_character"
    nul = route("pizza_ready", {"order_id": "a\x00b"})
    assert (nul.status, nul.reason) == (InboxStatus.INVALID, "nul_character")


def test_an_extractor_that_raises_makes_a_dead_letter(dispatcher: Any) -> None:
    template("Broken", process("p", listener(lt.BrokenExtractor, "wait", topic="broken")))
    result = route("broken", {"order_id": "x"})
    assert (result.status, result.reason) == (InboxStatus.INVALID, "extractor_error")
    assert "no idea" in result.detail


# -- duplicates ---------------------------------------------------------------------------------------------
def test_a_redelivered_message_has_no_second_effect(dispatcher: Any, relay: Any) -> None:
    wf = start(pizza("Dup", cls=lt.Ready), dispatcher, order_id="d1")
    first = route("pizza_ready", {"order_id": "d1", "done": False, "n": 1}, partition=3, offset=77)
    again = route("pizza_ready", {"order_id": "d1", "done": False, "n": 1}, partition=3, offset=77)
    by_id = route("pizza_ready", {"order_id": "d1", "done": False, "n": 2}, message_id="m-1")
    by_id_again = route("pizza_ready", {"order_id": "d1", "done": False, "n": 2}, message_id="m-1")
    assert (first.status, again.status) == ("routed", messages.DUPLICATE)
    assert again.inbox_id == first.inbox_id and again.matched == 1
    assert (by_id.status, by_id_again.status) == ("routed", messages.DUPLICATE)
    dispatcher.drain()
    assert reload(wf.id).runtime_parameters["seen"] == [
        ["order_listener_task", 1],
        ["order_listener_task", 2],
    ]
    assert InboxMessage.objects.count() == 2


def test_duplicates_inside_one_batch_are_routed_once(dispatcher: Any, relay: Any) -> None:
    start(pizza("DupBatch"), dispatcher, order_id="d2")
    message = messages.Incoming(topic="pizza_ready", payload={"order_id": "d2"}, partition=0, offset=5)
    results = messages.messages_route([message, dataclass_copy(message)])
    assert [r.status for r in results] == ["routed", messages.DUPLICATE]
    assert Delivery.objects.count() == 1


def dataclass_copy(message: messages.Incoming) -> messages.Incoming:
    import dataclasses

    return dataclasses.replace(message)


# -- early messages ------------------------------------------------------------------------------------------
def test_a_reply_that_overtakes_its_listener_is_buffered_and_delivered_at_start(
    dispatcher: Any, relay: Any
) -> None:
    wf = start(two_listeners("Early"), dispatcher, order_id="e1")
    result = route("topic_b", {"order_id": "e1", "n": "b"})
    dispatcher.drain()
    assert result.matched == 1
    assert statuses(wf.id)["second_listener_task"] == S.NOT_STARTED
    assert Delivery.objects.get().status == DeliveryStatus.BUFFERED
    assert InboxMessage.objects.get(pk=result.inbox_id).status == InboxStatus.BUFFERED

    route("topic_a", {"order_id": "e1", "n": "a"})
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["seen"] == [["first_listener_task", "a"], ["second_listener_task", "b"]]
    assert InboxMessage.objects.get(pk=result.inbox_id).status == InboxStatus.ROUTED


def test_a_buffered_message_whose_listener_start_was_lost_with_the_broker_is_sent_again(
    dispatcher: Any, clock: Any, relay: Any, settings: Any
) -> None:
    # No inline step: the listener that starts is handed to a worker in a message of its own.
    settings.DAGGER = {**settings.DAGGER, "INLINE_STEPS": 0}
    wf = start(two_listeners("EarlyLost"), dispatcher, order_id="e4")
    route("topic_b", {"order_id": "e4", "n": "b"})
    dispatcher.drain()
    assert Delivery.objects.get().status == DeliveryStatus.BUFFERED
    route("topic_a", {"order_id": "e4", "n": "a"})
    wf_id, node_id, lease = dispatcher.runs.popleft()
    services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease)  # the first one completes
    assert statuses(wf.id)["second_listener_task"] == S.EXECUTING
    dispatcher.lose_messages()  # its message is lost with the broker's data
    clock.advance(seconds=300)  # DELIVERY_LEASE_SECONDS
    assert messages.messages_sweep().redispatched == 1
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["seen"] == [["first_listener_task", "a"], ["second_listener_task", "b"]]


def test_a_buffered_message_expires_after_the_ttl_and_can_be_replayed(
    dispatcher: Any, clock: Any, relay: Any
) -> None:
    wf = start(two_listeners("Expiry", second=lt.ShortBuffer), dispatcher, order_id="e2")
    result = route("topic_b", {"order_id": "e2", "n": "b"})
    dispatcher.drain()
    clock.advance(seconds=4)
    assert messages.deliveries_expire() == 0
    clock.advance(seconds=2)  # ShortBuffer.buffer_ttl_seconds = 5
    assert messages.deliveries_expire() == 1
    assert InboxMessage.objects.get(pk=result.inbox_id).status == InboxStatus.EXPIRED

    route("topic_a", {"order_id": "e2", "n": "a"})
    dispatcher.drain()
    assert statuses(wf.id)["second_listener_task"] == S.EXECUTING  # the expired message is gone

    replayed = messages.message_replay(inbox_id=result.inbox_id)
    assert (replayed.status, replayed.matched) == ("routed", 1)
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_the_buffer_ttl_setting_applies_by_default(
    dispatcher: Any, clock: Any, settings: Any, relay: Any
) -> None:
    settings.DAGGER = {"BUFFER_TTL_SECONDS": 30}
    start(two_listeners("TTLSetting"), dispatcher, order_id="e3")
    route("topic_b", {"order_id": "e3"})
    dispatcher.drain()
    delivery = Delivery.objects.get()
    assert delivery.expires_at == clock.now() + dt.timedelta(seconds=30)


# -- allow_skip_to and reprocess_on_message ---------------------------------------------------------------------
def test_allow_skip_to_skips_the_steps_before_the_listener(dispatcher: Any, relay: Any) -> None:
    wf = start(two_listeners("SkipTo", allow_skip_to=True), dispatcher, order_id="s1")
    route("topic_b", {"order_id": "s1", "n": "b"})
    dispatcher.drain()
    wf = reload(wf.id)
    s = statuses(wf.id)
    assert s["first_listener_task"] == S.SKIPPED
    assert s["second_listener_task"] == S.COMPLETED
    assert wf.status == S.COMPLETED
    assert wf.runtime_parameters["trace"] == ["deliver_executor_task"]
    # The skipped listener without allow_skip_to takes no message any more.
    assert route("topic_a", {"order_id": "s1"}).matched == 0


def test_allow_skip_to_into_a_later_process_starts_it(dispatcher: Any, relay: Any) -> None:
    tmpl = template(
        "SkipToProcess",
        process("first", listener(lt.Ready, "first", topic="topic_a")),
        process("second", listener(lt.Ready, "second", topic="topic_b", allow_skip_to=True)),
        process("Delivery", executor(lt.Deliver, "deliver")),
    )
    wf = start(tmpl, dispatcher, order_id="s2")
    route("topic_b", {"order_id": "s2"})
    dispatcher.drain()
    s = statuses(wf.id)
    assert s["first"] == s["first_listener_task"] == S.SKIPPED
    assert s["second"] == s["second_listener_task"] == s["Delivery"] == S.COMPLETED
    assert reload(wf.id).status == S.COMPLETED


def test_a_skipped_listener_with_allow_skip_to_still_takes_its_message(dispatcher: Any, relay: Any) -> None:
    group = ParallelCompositeTaskTemplateBuilder(
        Dagger.app, 1, listener(lt.Ready, "late", topic="topic_c", allow_skip_to=True).build()
    )
    group.add_parallel_task(listener(lt.Ready, "fast", topic="topic_d").build())
    group.set_type(ParallelCompositeTask).set_name("group").set_task_operator("ATLEAST_ONE")
    tmpl = template(
        "LateSkipped", helper.generic_process_builder(process_name="main", root_task=group.build())
    )
    wf = start(tmpl, dispatcher, order_id="s3")
    route("topic_d", {"order_id": "s3"})
    dispatcher.drain()
    assert statuses(wf.id)["late_listener_task"] == S.STOPPED  # ATLEAST_ONE stopped it
    assert route("topic_c", {"order_id": "s3"}).matched == 0


def test_reprocess_on_message_runs_on_message_again_and_keeps_the_changes(
    dispatcher: Any, relay: Any
) -> None:
    wf = start(pizza("Reprocess", reprocess_on_message=True), dispatcher, order_id="r1")
    route("pizza_ready", {"order_id": "r1", "n": 1})
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED
    route("pizza_ready", {"order_id": "r1", "n": 2})
    dispatcher.drain()
    wf = reload(wf.id)
    assert wf.runtime_parameters["seen"] == [["order_listener_task", 1], ["order_listener_task", 2]]
    assert wf.runtime_parameters["trace"] == ["deliver_executor_task"]  # successors not re-run
    assert Delivery.objects.order_by("id").last().outcome == "reprocessed"


def test_without_reprocess_a_message_for_a_completed_listener_is_ignored(dispatcher: Any, relay: Any) -> None:
    wf = start(pizza("NoReprocess"), dispatcher, order_id="r2")
    route("pizza_ready", {"order_id": "r2", "n": 1, "done": False})
    route("pizza_ready", {"order_id": "r2", "n": 2})
    route("pizza_ready", {"order_id": "r2", "n": 3})
    dispatcher.drain()
    assert reload(wf.id).runtime_parameters["seen"] == [
        ["order_listener_task", 1],
        ["order_listener_task", 2],
    ]
    assert Delivery.objects.order_by("id").last().status == DeliveryStatus.IGNORED
    assert route("pizza_ready", {"order_id": "r2"}).matched == 0  # its subscription is gone


# -- re-keying ------------------------------------------------------------------------------------------------------
def test_changing_the_parameter_through_the_api_rekeys_the_listener(dispatcher: Any, relay: Any) -> None:
    wf = start(pizza("RekeyApi"), dispatcher, order_id="old")
    services.workflow_update_parameters(workflow_id=wf.id, changes={"order_id": "new"})
    assert route("pizza_ready", {"order_id": "old"}).matched == 0
    assert route("pizza_ready", {"order_id": "new"}).matched == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_a_task_changing_the_parameter_rekeys_a_later_listener(dispatcher: Any, relay: Any) -> None:
    tmpl = template(
        "RekeyTask", process("p", executor(lt.ChangeOrderId, "change"), listener(lt.Ready, "wait"))
    )
    wf = start(tmpl, dispatcher, order_id="before", new_order_id="after")
    assert Subscription.objects.get(workflow_id=wf.id).key_value == "after"


def test_on_message_changing_the_parameter_rekeys_the_listener(dispatcher: Any, relay: Any) -> None:
    wf = start(pizza("RekeyMessage"), dispatcher, order_id="k-1")
    route("pizza_ready", {"order_id": "k-1", "new_order_id": "k-2", "done": False})
    dispatcher.drain()
    assert Subscription.objects.get(workflow_id=wf.id).key_value == "k-2"
    assert route("pizza_ready", {"order_id": "k-1"}).matched == 0
    route("pizza_ready", {"order_id": "k-2"})
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


def test_stopping_the_workflow_removes_its_subscriptions_and_ignores_queued_messages(
    dispatcher: Any, relay: Any
) -> None:
    wf = start(pizza("Stopped"), dispatcher, order_id="x1")
    route("pizza_ready", {"order_id": "x1"})  # routed, not yet delivered
    services.workflow_stop(workflow_id=wf.id)
    dispatcher.drain()
    assert not Subscription.objects.filter(workflow_id=wf.id).exists()
    assert Delivery.objects.get().status == DeliveryStatus.IGNORED


# -- sweeps ----------------------------------------------------------------------------------------------------------
def test_a_delivery_whose_dispatch_was_lost_is_handed_out_again(
    dispatcher: Any, clock: Any, relay: Any
) -> None:
    wf = start(pizza("Lost"), dispatcher, order_id="l1")
    route("pizza_ready", {"order_id": "l1"})
    dispatcher.runs.clear()  # the Celery message is lost
    clock.advance(seconds=301)
    assert messages.deliveries_redispatch() == 1
    dispatcher.drain()
    assert reload(wf.id).status == S.COMPLETED


# -- task_update_topic ------------------------------------------------------------------------------------------------
def test_every_update_is_published_with_the_business_key(
    dispatcher: Any, relay: RecordingRelay, settings: Any
) -> None:
    settings.DAGGER = {"TASK_UPDATE_TOPIC": "updates"}
    wf = start(pizza("Updates"), dispatcher, order_id="u1")
    route("pizza_ready", {"order_id": "u1"})
    dispatcher.drain()
    updates = [r for r in relay.sent if r.topic == "updates"]
    assert updates and all(bytes(r.key) == b"u1" for r in updates)
    snapshots = [json.loads(bytes(r.value)) for r in updates]
    assert snapshots[0]["status"]["code"] == S.EXECUTING
    assert snapshots[-1]["status"]["code"] == S.COMPLETED and snapshots[-1]["update_count"] > 1
    assert str(wf.id) == snapshots[-1]["id"] and len(snapshots[-1]["tasks"]) == 5


# -- cost -------------------------------------------------------------------------------------------------------------
def test_routing_costs_a_few_statements_per_batch(
    dispatcher: Any, django_assert_max_num_queries: Any
) -> None:
    tmpl = pizza("Cost")
    for i in range(50):
        tmpl.create_instance(submit_task=True, order_id=f"c{i}")
    dispatcher.runs.clear()
    batch = [
        messages.Incoming(topic="pizza_ready", payload={"order_id": f"c{i}"}, partition=0, offset=i)
        for i in range(50)
    ]
    # dedupe check, subscription lookup, inbox insert, delivery insert (+ savepoint/commit)
    with django_assert_max_num_queries(6):
        results = messages.messages_route(batch)
    assert {r.status for r in results} == {"routed"}
    with django_assert_max_num_queries(6):
        messages.messages_route(
            [messages.Incoming(topic="pizza_ready", payload={"order_id": "c1"}, partition=1, offset=0)]
        )


def test_delivering_one_message_costs_two_short_transactions(
    dispatcher: Any, django_assert_max_num_queries: Any
) -> None:
    tmpl = template(
        "DeliverCost", process("p", listener(lt.Ready, "wait")), process("q", executor(lt.Deliver, "next"))
    )
    wf = tmpl.create_instance(submit_task=True, order_id="q1")
    dispatcher.drain()
    route("pizza_ready", {"order_id": "q1"})
    (workflow_id, node_id, lease) = dispatcher.runs.popleft()
    with django_assert_max_num_queries(24):
        services.node_run(workflow_id=workflow_id, node_id=node_id, lease=lease)
    assert reload(wf.id).status == S.COMPLETED


def test_skip_to_into_a_parallel_branch_starts_the_other_branches(dispatcher: Any, relay: Any) -> None:
    group = ParallelCompositeTaskTemplateBuilder(
        Dagger.app, 1, listener(lt.Ready, "jump", topic="topic_b", allow_skip_to=True).build()
    )
    group.add_parallel_task(executor(lt.Deliver, "beside").build())
    group.set_type(ParallelCompositeTask).set_name("group").set_task_operator("JOIN_ALL")
    tmpl = template(
        "SkipIntoGroup",
        process("first", listener(lt.Ready, "first", topic="topic_a")),
        helper.generic_process_builder(process_name="second", root_task=group.build()),
    )
    wf = start(tmpl, dispatcher, order_id="pg1")
    route("topic_b", {"order_id": "pg1"})
    dispatcher.drain()
    s = statuses(wf.id)
    assert s["first"] == S.SKIPPED
    assert s["jump_listener_task"] == s["beside_executor_task"] == s["group"] == S.COMPLETED
    assert reload(wf.id).status == S.COMPLETED


def test_a_send_outside_a_task_rolls_back_with_its_transaction(relay: RecordingRelay) -> None:
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        Dagger.create_topic("rolled_back").send(value={"x": 1})
        raise RuntimeError("the caller's transaction fails")
    assert not OutboxMessage.objects.exists() and relay.sent == []


def test_a_single_pair_returned_where_a_list_was_expected_is_accepted() -> None:
    class Single(lt.Ready):
        async def get_correlatable_keys_from_payload(self, payload: Any) -> Any:
            return ("order_id", payload["order_id"])

    keys = correlation.extract_keys(correlation.TopicListeners("t", (Single,)), {"order_id": 3})
    assert keys.pairs == [("order_id", "3")]


def test_a_batch_of_listeners_reads_their_deliveries_and_messages_once(dispatcher: Any) -> None:
    """``run_nodes`` of K listeners with a message each: their open deliveries and the messages
    are read in one statement for the batch on PostgreSQL (the messages joined to each
    listener's first delivery; one statement each elsewhere), not two per listener."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    tmpl = pizza("PrefetchPizza")
    workflows = [start(tmpl, dispatcher, order_id=f"prefetch-{i}") for i in range(6)]
    for i in range(6):
        assert route("pizza_ready", {"order_id": f"prefetch-{i}", "n": i}).matched == 1
    targets = [(wf, node) for wf, node, _ in dispatcher.runs]
    dispatcher.runs.clear()
    assert len(targets) == 6

    def reads(ctx: CaptureQueriesContext, table: str) -> int:
        return sum(
            1 for q in ctx.captured_queries if q["sql"].startswith("SELECT") and f'"{table}"' in q["sql"]
        )

    with CaptureQueriesContext(connection) as ctx:
        services.nodes_run(targets=targets, lease="prefetch")
    assert reads(ctx, "dagger_django_delivery") == 1
    assert reads(ctx, "dagger_django_inboxmessage") == 1
    if connection.vendor == "postgresql":
        both = [q for q in ctx.captured_queries if '"dagger_django_inboxmessage"' in q["sql"]]
        assert len(both) == 1 and '"dagger_django_delivery"' in both[0]["sql"]
    for i, wf in enumerate(workflows):  # and the listeners took their messages as one by one
        assert statuses(wf.id)["order_listener_task"] == Status.COMPLETED
        assert reload(wf.id).runtime_parameters["seen"] == [["order_listener_task", i]]


def test_the_batch_prefetch_reads_at_most_the_claim_window_of_a_listener_backlog(dispatcher: Any) -> None:
    """A listener with a long backlog: the batch reads its first _CLAIM_WINDOW open deliveries, as
    a claim of that listener alone does, not the whole backlog."""
    wf = start(pizza("PrefetchBacklog"), dispatcher, order_id="backlog")
    window = messages._CLAIM_WINDOW
    batch = [
        messages.Incoming(topic="pizza_ready", payload={"order_id": "backlog", "n": i}, partition=7, offset=i)
        for i in range(window + 30)
    ]
    assert sum(r.matched for r in messages.messages_route(batch)) == window + 30
    listener = stored_nodes.get(workflow_id=wf.id, kind="listener")
    open_ids = list(Delivery.objects.filter(node_id=listener.id).order_by("id").values_list("id", flat=True))
    prefetched = messages._Prefetched([listener.id])
    assert [row["id"] for row in prefetched.deliveries[listener.id]] == open_ids[:window]
    assert list(prefetched.messages) == [prefetched.deliveries[listener.id][0]["message_id"]]
