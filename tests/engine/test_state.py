"""The engine's own row reader and writers agree with the ORM they stand in for."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from dagger_django.engine.state import field_preparers, insert_rows, load_locked, update_rows
from dagger_django.models import HistoryRecord, Node, Status, Workflow, WorkflowTemplate

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


@pytest.mark.parametrize("model", [Workflow, Node, HistoryRecord])
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
        workflow=wf,
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
        insert_rows(Workflow, [wf])
        insert_rows(Node, [node])
    assert not wf._state.adding and not node._state.adding

    node.status, node.attempts, node.config = Status.EXECUTING, 2, {"topic": "u"}
    node.updated_at = now + dt.timedelta(seconds=1)
    with transaction.atomic():
        update_rows(Node, ["status", "attempts", "config", "updated_at"], [node])
        locked_wf, nodes = load_locked(wf.id)

    orm_wf = Workflow.objects.get(pk=wf.id)
    orm_node = Node.objects.get(pk=node.id)
    assert locked_wf is not None and [n.pk for n in nodes] == [node.pk]
    for field in Workflow._meta.concrete_fields:
        assert getattr(locked_wf, field.attname) == getattr(orm_wf, field.attname), field.name
    for field in Node._meta.concrete_fields:
        assert getattr(nodes[0], field.attname) == getattr(orm_node, field.attname), field.name
    assert (orm_node.status, orm_node.attempts, orm_node.config) == (Status.EXECUTING, 2, {"topic": "u"})
    assert load_locked(uuid.uuid4()) == (None, [])
