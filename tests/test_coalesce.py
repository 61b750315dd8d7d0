"""The worker-side gathering of ``run_node`` messages into ``run_nodes`` batches
(``dagger_django.adapters.coalesce``), with a stand-in consumer: what it holds, publishes,
acknowledges and runs at once. The real worker runs it in tests/e2e/test_worker.py."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from dagger_django.adapters import coalesce
from dagger_django.adapters.celery import CeleryDispatcher


@dataclass
class Timer:
    calls: list[Any] = field(default_factory=list)

    def call_after(self, secs: float, fun: Any) -> Any:
        entry = Entry(fun)
        self.calls.append(entry)
        return entry

    def fire(self) -> None:
        for entry in self.calls:
            if not entry.cancelled:
                entry.fun()
        self.calls.clear()


@dataclass
class Entry:
    fun: Any
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Qos:
    """Prefetch slots given back while messages are held (kombu's QoS, counted)."""

    extra: int = 0

    def increment_eventually(self, n: int = 1) -> None:
        self.extra += n

    def decrement_eventually(self, n: int = 1) -> None:
        self.extra -= n


@dataclass
class Pool:
    num_processes: int = 2


@dataclass
class Consumer:
    qos: Qos = field(default_factory=Qos)
    pool: Pool = field(default_factory=Pool)
    timer: Timer = field(default_factory=Timer)
    hub: object = field(default_factory=object)
    connection_errors: tuple[type, ...] = ()


@dataclass
class Message:
    args: list[Any]
    headers: dict[str, Any] = field(default_factory=dict)
    acked: int = 0

    def decode(self) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        return self.args, {}, {}


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Any:
    settings.DAGGER = {**getattr(settings, "DAGGER", {}), "COALESCE_SECONDS": 0.005, "DISPATCH_BATCH": 5}
    ran: list[Message] = []
    published: list[list[tuple[uuid.UUID, uuid.UUID]]] = []

    def run_now(message: Message, body: Any, ack: Any, reject: Any, callbacks: Any) -> None:
        ran.append(message)

    monkeypatch.setattr("celery.worker.strategy.default", lambda task, app, consumer, **kw: run_now)
    monkeypatch.setattr(
        CeleryDispatcher, "run_nodes", lambda self, *, targets: published.append(list(targets))
    )
    consumer = Consumer()
    handler = coalesce.strategy(object(), object(), consumer)
    # Both pool processes have a task: messages are held (see the test of a free process below).
    busy = {object(), object()}
    monkeypatch.setattr("celery.worker.state.reserved_requests", busy)

    def deliver(message: Message) -> None:
        def ack(logger: Any, errors: Any) -> None:
            message.acked += 1

        handler(message, None, ack, None, None)

    return consumer, deliver, ran, published


def test_while_a_pool_process_is_free_messages_run_at_once(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, deliver, ran, published = world
    monkeypatch.setattr("celery.worker.state.reserved_requests", {object()})  # one of two busy
    first, second = message(), message()
    deliver(first)
    deliver(second)
    assert ran == [first, second] and not published and not consumer.timer.calls


def message(workflow: uuid.UUID | None = None, **headers: Any) -> Message:
    return Message([str(workflow or uuid.uuid4()), str(uuid.uuid4())], headers)


def test_messages_held_in_the_window_go_as_one_batch_one_node_per_workflow(world: Any) -> None:
    consumer, deliver, ran, published = world
    shared = uuid.uuid4()
    first, second, branch, third = message(shared), message(), message(shared), message()
    for m in (first, second, branch, third):
        deliver(m)
    assert not ran and not published  # held until the window ends
    assert consumer.qos.extra == 4  # without taking prefetch slots
    consumer.timer.fire()
    assert consumer.qos.extra == 0
    assert [[str(w) for w, _ in batch] for batch in published] == [
        [first.args[0], second.args[0], third.args[0]]
    ]
    assert (first.acked, second.acked, third.acked) == (1, 1, 1)
    assert ran == [branch] and branch.acked == 0  # a second node of a workflow runs on its own


def test_a_full_batch_goes_at_once(world: Any) -> None:
    consumer, deliver, ran, published = world
    for _ in range(5):
        deliver(message())
    assert len(published) == 1 and len(published[0]) == 5
    consumer.timer.fire()  # the window's callback was cancelled
    assert len(published) == 1 and not ran


def test_a_lone_message_runs_as_usual_after_the_window(world: Any) -> None:
    consumer, deliver, ran, published = world
    lone = message()
    deliver(lone)
    consumer.timer.fire()
    assert ran == [lone] and not published and lone.acked == 0


def test_retries_and_countdowns_are_never_held(world: Any) -> None:
    consumer, deliver, ran, published = world
    retry, later, odd = message(retries=1), message(eta="2026-12-02T00:00:00"), Message(["only one"])
    for m in (retry, later, odd):
        deliver(m)
    assert ran == [retry, later, odd] and not consumer.timer.calls


def test_when_the_batch_cannot_be_published_every_message_runs_as_usual(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, deliver, ran, published = world

    def down(self: Any, *, targets: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(CeleryDispatcher, "run_nodes", down)
    held = [message(), message()]
    for m in held:
        deliver(m)
    consumer.timer.fire()
    assert ran == held and [m.acked for m in held] == [0, 0]
