"""The reads the pages make (engine/selectors.py): what they return, in what order, in how many queries."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dagger_django.engine import selectors
from dagger_django.exceptions import WorkflowDoesNotExist
from dagger_django.models import Status

from . import builders as b
from . import tasks as t

S = Status


def run(template: Any, dispatcher: Any, **params: Any) -> Any:
    instance = template.create_instance(submit_task=True, partition_key_lookup="order_id", **params)
    dispatcher.drain()
    return instance


def test_workflow_events_are_the_history_oldest_first_as_plain_events(
    dispatcher: Any, django_assert_num_queries: Any
) -> None:
    wf = run(b.linear("SelectHistory", (t.Record, "a")), dispatcher, order_id="h-1")

    with django_assert_num_queries(1):
        events = selectors.workflow_events(workflow_id=wf.id)

    assert all(isinstance(e, selectors.Event) for e in events)
    moves = [(e.node_name.rsplit(".", 1)[-1], e.from_status, e.to_status) for e in events]
    assert moves.index(("", S.NOT_STARTED, S.EXECUTING)) < moves.index(
        ("a_executor_task", S.NOT_STARTED, S.SUBMITTED)
    )
    assert moves[-1] == ("", S.EXECUTING, S.COMPLETED)
    assert [e.created_at for e in events] == sorted(e.created_at for e in events)
    task = [m for m in moves if m[0] == "a_executor_task" and m[1] != m[2]]
    assert task == [
        ("a_executor_task", S.NOT_STARTED, S.SUBMITTED),
        ("a_executor_task", S.SUBMITTED, S.EXECUTING),
        ("a_executor_task", S.EXECUTING, S.COMPLETED),
    ]
    done = next(e for e in events if e.to_status == S.COMPLETED and e.node_name.endswith("a_executor_task"))
    assert done.attempt == 1 and done.node_id is not None and done.created_at is not None
    assert isinstance(done.detail, dict)


def test_history_transitions_count_counts_status_changes_only(
    dispatcher: Any, django_assert_num_queries: Any
) -> None:
    first = run(b.linear("SelectCount", (t.Record, "a")), dispatcher, order_id="c-1")
    second = run(b.linear("SelectCount", (t.Record, "a")), dispatcher, order_id="c-2")
    moves = [e for e in selectors.workflow_events(workflow_id=first.id) if e.from_status != e.to_status]
    assert 0 < len(moves) < len(selectors.workflow_events(workflow_id=first.id))

    with django_assert_num_queries(1):
        assert selectors.history_transitions_count(workflow_ids=[first.id]) == len(moves)
    assert selectors.history_transitions_count(workflow_ids=[first.id, "not-a-uuid"]) == len(moves)
    assert selectors.history_transitions_count() == 2 * len(moves)
    assert selectors.history_transitions_count(workflow_ids=[second.id, first.id]) == 2 * len(moves)


def test_workflow_nodes_come_in_position_order_with_their_links(dispatcher: Any) -> None:
    wf = run(b.decision("SelectNodes"), dispatcher, branch=1, order_id="n-1")

    nodes = selectors.workflow_nodes(workflow_id=wf.id)

    assert [n.position for n in nodes] == sorted(n.position for n in nodes)
    by_id = {n.id: n for n in nodes}
    decide = next(n for n in nodes if n.name.endswith("decide"))
    assert len(decide.next_ids) == 2 and all(i in by_id for i in decide.next_ids)
    assert {by_id[i].status for i in decide.next_ids} == {S.COMPLETED, S.SKIPPED}
    assert decide.kind_label == "Decision" and decide.status_label == "Completed"


@pytest.mark.parametrize("workflow_id", ["not-a-uuid", "", str(uuid.uuid4())])
def test_an_unknown_workflow_has_no_nodes_no_history_and_no_detail(engine: Any, workflow_id: str) -> None:
    assert selectors.workflow_nodes(workflow_id=workflow_id) == []
    assert selectors.workflow_events(workflow_id=workflow_id) == []
    with pytest.raises(WorkflowDoesNotExist):
        selectors.workflow_detail_get(workflow_id=workflow_id)


def test_workflow_detail_reads_the_workflow_and_its_nodes_in_two_queries(
    dispatcher: Any, django_assert_num_queries: Any
) -> None:
    wf = run(b.linear("SelectDetail", (t.Record, "a"), (t.Record, "b")), dispatcher, order_id="d-1")

    with django_assert_num_queries(2):
        detail = selectors.workflow_detail_get(workflow_id=str(wf.id))

    assert (detail.id, detail.status, detail.business_key, detail.version) == (wf.id, S.COMPLETED, "d-1", 1)
    assert [n.id for n in detail.tasks] == [n.id for n in selectors.workflow_nodes(workflow_id=wf.id)]


def test_workflow_list_filters_and_searches_by_exact_values(dispatcher: Any) -> None:
    tmpl = b.linear("SelectList", (t.Record, "a"))
    done = run(tmpl, dispatcher, order_id="l-1")
    waiting = tmpl.create_instance(partition_key_lookup="order_id", order_id="l-2")

    def ids(workflows: Any) -> list[Any]:
        return [w.id for w in workflows]

    assert ids(selectors.workflow_list(template="SelectList")) == [waiting.id, done.id]
    assert ids(selectors.workflow_list(status=S.COMPLETED, template="SelectList")) == [done.id]
    assert ids(selectors.workflow_list(key="l-2")) == [waiting.id]
    assert selectors.workflow_list(key="l-2")[0].version == 1
    everything = selectors.workflow_list()
    assert ids(selectors.workflow_search(workflows=everything, term=f" {done.id} ")) == [done.id]
    assert ids(selectors.workflow_search(workflows=everything, term="l-2")) == [waiting.id]
    assert ids(selectors.workflow_search(workflows=everything, term="L-2")) == []


def test_workflows_count_stops_at_the_cap_unless_the_page_asked_goes_further(
    dispatcher: Any, settings: Any
) -> None:
    tmpl = b.linear("SelectCount", (t.Record, "a"))
    for n in range(4):
        tmpl.create_instance(partition_key_lookup="order_id", order_id=f"c-{n}")
    workflows = selectors.workflow_list(template="SelectCount")

    settings.DAGGER = {**settings.DAGGER, "LIST_COUNT_LIMIT": 2}
    assert selectors.workflows_count(workflows=workflows) == (3, False)
    assert selectors.workflows_count(workflows=workflows, at_least=10) == (4, True)
    settings.DAGGER = {**settings.DAGGER, "LIST_COUNT_LIMIT": 0}
    assert selectors.workflows_count(workflows=workflows) == (4, True)


# -- a workflow's waits (the admin's panels) and a template's graph ----------------------------------
def test_a_workflows_timers_listeners_messages_and_declaration_in_a_query_each(
    engine: Any, django_assert_num_queries: Any
) -> None:
    from ..page_workflows import waiting_order

    dispatcher, clock = engine
    wf = waiting_order("SelectWaits", dispatcher, clock, order_id="w-1")
    model = wf.model

    # The nodes' names and statuses come from the workflow's nodes: given (the page has read
    # them), or read once more (a second query).
    with django_assert_num_queries(1):
        nodes = selectors.workflow_nodes(workflow_id=wf.id)
    with django_assert_num_queries(2):
        alone = selectors.workflow_timers_pending(workflow_id=wf.id)
    with django_assert_num_queries(1):
        timers = selectors.workflow_timers_pending(workflow_id=wf.id, nodes=nodes)
    assert alone == timers
    assert [(x.node_name.rsplit(".", 1)[-1], x.purpose) for x in timers.rows] == [("remind", "trigger")]
    assert not timers.more

    with django_assert_num_queries(1):
        listeners = selectors.workflow_listeners_waiting(workflow_id=wf.id, limit=1, nodes=nodes)
    assert listeners.more and len(listeners.rows) == 1
    (first,) = listeners.rows
    assert (first.topic, first.key_name, first.key_value, first.node_status) == (
        "orders",
        "order_id",
        "w-1",
        S.EXECUTING,
    )

    with django_assert_num_queries(2):
        found = selectors.workflow_messages(workflow_id=wf.id, business_key=model.business_key, nodes=nodes)
    assert found == selectors.workflow_messages(workflow_id=wf.id, business_key=model.business_key)
    assert [(m.topic, m.status, m.delivery_status) for m in found.rows] == [
        ("orders", "invalid", ""),
        ("shipments", "buffered", "buffered"),
    ]

    with django_assert_num_queries(1):
        declared = selectors.template_declaration_get(template_id=model.template_id)
    assert declared is not None and [p.name for p in declared.params] == [
        "order_id",
        "branch",
        "run_at",
        "note",
    ]
    assert declared.get("note") is not None and declared.get("note").default == "<none>"

    assert selectors.workflow_timers_pending(workflow_id="not-a-uuid") == selectors.Bounded([], False)


def test_a_template_is_drawn_with_the_shape_of_its_workflows(engine: Any) -> None:
    from dagger_django.graph_view import GraphNode, graph_of

    from ..page_workflows import waiting_order

    dispatcher, clock = engine
    wf = waiting_order("SelectDrawn", dispatcher, clock)
    template = wf.model.template

    def shape(chain: list[GraphNode]) -> list[Any]:
        return [
            (
                item.node.name,
                item.node.kind,
                shape(item.chain),
                [shape(branch) for branch in item.branches],
                [shape(alt) for alt in item.alternatives],
            )
            for item in chain
        ]

    drawn = graph_of(selectors.template_nodes(graph=template.graph, created_at=template.created_at))
    assert shape(drawn) == shape(graph_of(selectors.workflow_nodes(workflow_id=wf.id)))
    assert {item.node.status for item in drawn} == {""}


def test_workflows_count_of_the_list_reads_the_workflow_table_alone(
    dispatcher: Any, django_assert_num_queries: Any
) -> None:
    """The list's template version is a subquery of its page, so a count (``values("pk")``)
    needs no join and is served by the status or creation index alone."""
    tmpl = b.linear("SelectCountJoin", (t.Record, "a"))
    wf = tmpl.create_instance(partition_key_lookup="order_id", order_id="j-1")
    with django_assert_num_queries(1) as counted:
        assert selectors.workflows_count(workflows=selectors.workflow_list(status=S.NOT_STARTED)) == (1, True)
    assert "workflowtemplate" not in counted.captured_queries[0]["sql"]
    assert [w.version for w in selectors.workflow_list(key="j-1")] == [1]
    assert [w.id for w in selectors.workflow_list(version=1, template="SelectCountJoin")] == [wf.id]
    assert list(selectors.workflow_list(version=2, template="SelectCountJoin")) == []
