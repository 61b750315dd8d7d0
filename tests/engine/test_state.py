"""The engine's own row reader and writers agree with the ORM they stand in for."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from dagger_django.engine.state import (
    PAGE_SIZE,
    WorkflowState,
    field_preparers,
    load_locked,
    update_rows,
)
from dagger_django.models import (
    NODE_FIELDS,
    HistoryRecord,
    Node,
    NodePage,
    Status,
    Workflow,
    WorkflowTemplate,
)
from tests.helpers import stored_nodes

pytestmark = pytest.mark.django_db


def _values(field: Any) -> list[Any]:
    """Values of the kinds the engine writes into ``field``, plus ones that need converting."""
    from django.db import models

    now = timezone.now()
    if isinstance(field, models.ForeignKey):
        return [*_values(field.target_field), None]
    if isinstance(field, models.JSONField):
        return [{"a": [1, "x", None]}, [], {}, None, "text"]
    if isinstance(field, models.DateTimeField):
        return [now, None, now.astimezone(dt.timezone(dt.timedelta(hours=5)))]
    if isinstance(field, models.BooleanField):
        return [True, False]
    if isinstance(field, models.IntegerField):
        return [0, 7, True, "12"]
    if isinstance(field, models.CharField | models.TextField):
        return ["plain", Status.COMPLETED, "", None]
    if isinstance(field, models.UUIDField):
        return [uuid.uuid4(), str(uuid.uuid4()), None]
    return []


def _adapted(value: Any) -> Any:
    """What psycopg will send: JSON wrappers compared by their content."""
    return ("json", value.obj) if hasattr(value, "obj") and hasattr(value, "dumps") else value


@pytest.mark.parametrize("model", [Workflow, NodePage, HistoryRecord])
def test_fast_preparers_give_what_the_fields_would(model: Any) -> None:
    fields = [f for f in model._meta.concrete_fields if not f.auto_created]
    for (attname, prep), field in zip(field_preparers(connection, fields), fields, strict=True):
        assert attname == field.attname
        values = _values(field)
        assert values, f"no sample values for {field!r}: add its type to _values"
        for value in values:
            expected = field.get_db_prep_save(value, connection)
            assert _adapted(prep(value, connection)) == _adapted(expected), (field.name, value)


def test_rows_written_and_read_back_equal_what_the_orm_reads() -> None:
    now = timezone.now()
    template = WorkflowTemplate.objects.create(name="StateRows", version=1, digest="d" * 64, graph={})
    wf = Workflow(
        template=template,
        template_name="StateRows",
        template_class="x:Y",
        status=Status.EXECUTING,
        runtime_parameters={"order_id": "o-1", "items": [1, 2]},
        business_key="o-1",
        time_created=now,
        updated_at=now,
    )
    node = Node(
        workflow_id=wf.id,
        name="StateRows.p.t",
        node_type="LEAF",
        kind="executor",
        task_class="x:T",
        status=Status.SUBMITTED,
        next_ids=[str(uuid.uuid4())],
        config={"topic": "t", "n": 1.5},
        time_created=now,
        updated_at=now,
    )
    with transaction.atomic():
        WorkflowState(wf, [node], is_new=True).flush()
    assert not wf._state.adding

    node.status, node.attempts, node.config = Status.EXECUTING, 2, {"topic": "u"}
    node.updated_at = now + dt.timedelta(seconds=1)
    with transaction.atomic():
        update_rows(Workflow, ["nodes"], [wf])  # what a flush writes when only the first page changed
        locked_wf, nodes = load_locked(wf.id)

    orm_wf = Workflow.objects.get(pk=wf.id)
    assert locked_wf is not None and [n.pk for n in nodes] == [node.pk]
    for field in Workflow._meta.concrete_fields:
        assert getattr(locked_wf, field.attname) == getattr(orm_wf, field.attname), field.name
    # wf.nodes was encoded by the first flush: the update wrote the node as it was then.
    assert (nodes[0].status, nodes[0].attempts, nodes[0].config) == (
        Status.SUBMITTED,
        0,
        {"topic": "t", "n": 1.5},
    )
    with transaction.atomic():
        state = WorkflowState(*load_locked(wf.id))
        loaded = state.node(node.id)
        loaded.status, loaded.attempts, loaded.config = Status.EXECUTING, 2, {"topic": "u"}
        state.touch(loaded)
        state.flush()
    stored = stored_nodes.get(pk=node.id)
    for name in NODE_FIELDS:
        if name != "updated_at":
            assert getattr(stored, name) == getattr(loaded, name), name
    assert (stored.status, stored.attempts, stored.config) == (Status.EXECUTING, 2, {"topic": "u"})
    assert stored.workflow_id == wf.id and stored.page == 0
    assert load_locked(uuid.uuid4()) == (None, [])


def test_a_large_workflow_is_stored_in_pages_and_a_step_rewrites_only_its_page() -> None:
    """More nodes than a page: the first page in the workflow row, the rest in NodePage rows; a
    change of one node rewrites its own page, not the others."""
    now = timezone.now()
    template = WorkflowTemplate.objects.create(name="StatePages", version=1, digest="e" * 64, graph={})
    wf = Workflow(
        template=template,
        template_name="StatePages",
        template_class="x:Y",
        status=Status.EXECUTING,
        time_created=now,
        updated_at=now,
    )
    count = 3 * PAGE_SIZE + 5
    made = [
        Node(
            workflow_id=wf.id,
            name=f"StatePages.p.t{i}",
            node_type="LEAF",
            kind="executor",
            task_class="x:T",
            position=i,
            time_created=now,
            updated_at=now,
        )
        for i in range(count)
    ]
    with transaction.atomic():
        WorkflowState(wf, made, is_new=True).flush()
    assert Workflow.objects.get(pk=wf.id).node_pages == 3
    assert len(Workflow.objects.get(pk=wf.id).nodes) == PAGE_SIZE
    assert list(NodePage.objects.filter(workflow_id=wf.id).values_list("number", flat=True)) == [1, 2, 3]
    before = {p.number: p.nodes for p in NodePage.objects.filter(workflow_id=wf.id)}

    with transaction.atomic():
        state = WorkflowState(*load_locked(wf.id))
        assert [n.id for n in state.nodes.values()] == [n.id for n in made]
        target = state.node(made[2 * PAGE_SIZE + 1].id)
        state.set_status(target, Status.SUBMITTED, reason="test")
        state.flush()
        assert state.pages.keys() == {2}
    after = {p.number: p.nodes for p in NodePage.objects.filter(workflow_id=wf.id)}
    assert after[1] == before[1] and after[3] == before[3] and after[2] != before[2]
    assert stored_nodes.get(pk=target.id).status == Status.SUBMITTED
    assert Workflow.objects.get(pk=wf.id).leased_since is not None  # a task waits for a worker
