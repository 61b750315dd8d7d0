"""The dispatcher port's batching (a timer sweep hands the tasks it fires over in batches)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from dagger_django.engine import ports


@dataclass
class Recorder:
    """A dispatcher that records what it is asked to send, in order."""

    calls: list[tuple[str, Any]] = field(default_factory=list)

    def run_node(self, *, workflow_id: Any, node_id: Any) -> None:
        self.calls.append(("run_node", node_id))

    def run_nodes(self, *, targets: list[tuple[Any, Any]]) -> None:
        self.calls.append(("run_nodes", [n for _, n in targets]))

    def fire_timer(self, *, timer_id: int, eta: Any) -> None:
        self.calls.append(("fire_timer", timer_id))


@pytest.fixture
def recorder(settings: Any) -> Any:
    settings.DAGGER = {**getattr(settings, "DAGGER", {}), "DISPATCH_BATCH": 2}
    target = Recorder()
    previous = ports.set_dispatcher(target)
    yield target
    ports.set_dispatcher(previous)


def test_nodes_go_in_batches_and_the_rest_when_the_block_ends(recorder: Recorder) -> None:
    with ports.dispatch_in_batches():
        for node in ("a", "b", "c"):
            ports.get_dispatcher().run_node(workflow_id=uuid.uuid4(), node_id=node)
        ports.get_dispatcher().fire_timer(timer_id=7, eta=None)  # not batched: passes at once
        assert recorder.calls == [("run_nodes", ["a", "b"]), ("fire_timer", 7)]
    assert recorder.calls[-1] == ("run_node", "c")  # a batch of one is a plain run_node
    assert ports.get_dispatcher() is recorder


def test_what_was_collected_is_sent_even_when_the_block_raises(recorder: Recorder) -> None:
    with pytest.raises(RuntimeError), ports.dispatch_in_batches():
        ports.get_dispatcher().run_node(workflow_id=uuid.uuid4(), node_id="a")
        raise RuntimeError("the database went away")
    assert recorder.calls == [("run_node", "a")]


def test_dispatch_nodes_sends_one_batch_and_one_alone(recorder: Recorder) -> None:
    wf = uuid.uuid4()
    ports.dispatch_nodes([(wf, "a"), (wf, "b")])
    ports.dispatch_nodes([(wf, "c")])
    ports.dispatch_nodes([])
    assert recorder.calls == [("run_nodes", ["a", "b"]), ("run_node", "c")]


def test_a_second_node_of_a_waiting_workflow_goes_alone_so_branches_stay_parallel(
    recorder: Recorder,
) -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    with ports.dispatch_in_batches():
        dispatcher = ports.get_dispatcher()
        dispatcher.run_node(workflow_id=one, node_id="one-a")
        dispatcher.run_node(workflow_id=one, node_id="one-b")  # a parallel branch of the same workflow
        dispatcher.run_node(workflow_id=two, node_id="two-a")
    assert recorder.calls == [("run_node", "one-b"), ("run_nodes", ["one-a", "two-a"])]
