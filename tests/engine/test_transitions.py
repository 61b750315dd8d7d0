"""Declared transitions of the statuses written by UPDATE (deliveries, inbox rows, timers, outbox
rows): every writer goes through ``models.status.transition``, and an illegal move changes nothing."""

from __future__ import annotations

import ast
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import Model, TextChoices
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dagger_django.models import (
    Delivery,
    DeliveryStatus,
    InboxMessage,
    InboxStatus,
    OutboxMessage,
    OutboxStatus,
    Timer,
    TimerPurpose,
    TimerStatus,
    Workflow,
    WorkflowTemplate,
)
from dagger_django.models.status import (
    DELIVERY_TRANSITIONS,
    INBOX_TRANSITIONS,
    OUTBOX_TRANSITIONS,
    TIMER_TRANSITIONS,
    Table,
    allowed_from,
    sole_source,
    transition,
)

PACKAGE = Path(__file__).resolve().parents[2] / "dagger_django"
HELPER = PACKAGE / "models" / "status.py"

TABLES: list[tuple[str, type[Model], type[TextChoices], Table]] = [
    ("delivery", Delivery, DeliveryStatus, DELIVERY_TRANSITIONS),
    ("inbox", InboxMessage, InboxStatus, INBOX_TRANSITIONS),
    ("timer", Timer, TimerStatus, TIMER_TRANSITIONS),
    ("outbox", OutboxMessage, OutboxStatus, OUTBOX_TRANSITIONS),
]


# -- every writer goes through the helper ------------------------------------------------------------
def status_writes(path: Path, root: Path = PACKAGE) -> list[str]:
    """``.update(...)`` calls that write ``status`` (or may: a ``**`` argument) in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "update":
            continue
        if any(kw.arg == "status" or kw.arg is None for kw in node.keywords):
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def raw_status_writes(path: Path, root: Path = PACKAGE) -> list[str]:
    """Text constants of raw SQL that set a status column."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(root)}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "set status" in " ".join(node.value.lower().split())
    ]


def bypasses(root: Path) -> list[str]:
    helper = root / "models" / "status.py"
    return [
        where
        for path in sorted(root.rglob("*.py"))
        if "migrations" not in path.parts and path != helper
        for where in status_writes(path, root)
    ]


def test_no_status_update_bypasses_the_transition_helper() -> None:
    assert bypasses(PACKAGE) == []
    # the helper itself is the one place that writes status=
    assert len(status_writes(HELPER)) == 1


def test_raw_sql_status_writes_take_their_source_from_the_table() -> None:
    """The two compiled statements (timer claim, timer cancel) compare with ``=``: each file that
    holds one reads the status to compare with from ``TIMER_TRANSITIONS`` (``sole_source``)."""
    raw = {
        where.split(":")[0]
        for path in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in path.parts
        for where in raw_status_writes(path)
    }
    assert raw == {"engine/timers.py", "engine/state.py"}
    for name in raw:
        assert "sole_source(TIMER_TRANSITIONS" in (PACKAGE / name).read_text()


def test_the_bypass_check_finds_a_direct_write(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "status.py").write_text("rows.update(status=to)\n")
    (tmp_path / "engine.py").write_text(
        "Delivery.objects.filter(pk=1).update(\n    status='delivered')\n"
        "rows.update(**fields)\n"
        "rows.update(updated_at=now)\n"
        "transition(rows, 'delivered', outcome='x')\n"
    )
    assert bypasses(tmp_path) == ["engine.py:1", "engine.py:3"]


# -- the tables ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "model", "enum", "table"), TABLES, ids=[t[0] for t in TABLES])
def test_a_table_covers_its_enum_and_is_the_models(name: str, model: Any, enum: Any, table: Table) -> None:
    assert set(table) == set(enum.values)
    assert all(tos <= set(enum.values) for tos in table.values())
    assert model.STATUS_TRANSITIONS is table
    default = model._meta.get_field("status").default
    if isinstance(default, str) and default:
        assert default in table  # created in a status of the table


def test_allowed_from_and_sole_source() -> None:
    assert allowed_from(TIMER_TRANSITIONS, TimerStatus.FIRED) == ("PENDING",)
    assert sole_source(TIMER_TRANSITIONS, TimerStatus.CANCELLED) == "PENDING"
    assert set(allowed_from(DELIVERY_TRANSITIONS, DeliveryStatus.EXPIRED)) == {"buffered"}
    with pytest.raises(ValueError, match="from"):
        sole_source(DELIVERY_TRANSITIONS, DeliveryStatus.CLAIMED)
    with pytest.raises(ValueError, match="no status"):
        allowed_from({"a": frozenset()}, "a")


# -- illegal transitions are refused, legal ones written, in one statement ----------------------------
def _workflow() -> Workflow:
    now = timezone.now()
    template, _ = WorkflowTemplate.objects.get_or_create(
        name="transitions", version=1, defaults={"digest": "x", "graph": {}}
    )
    return Workflow.objects.create(
        template=template, template_name="transitions", template_class="x:Y", time_created=now, updated_at=now
    )


def _row(model: Any, status: str, workflow: Workflow) -> Any:
    now = timezone.now()
    if model is Timer:
        return Timer.objects.create(
            workflow=workflow, purpose=TimerPurpose.RETRY, due_at=now, status=status, created_at=now
        )
    if model is OutboxMessage:
        return OutboxMessage.objects.create(kind="send", topic="t", created_at=now, status=status)
    inbox_status = status if model is InboxMessage else InboxStatus.ROUTED
    message = InboxMessage.objects.create(
        source="http", topic="t", status=inbox_status, received_at=now, updated_at=now
    )
    if model is InboxMessage:
        return message
    return Delivery.objects.create(
        message=message,
        workflow=workflow,
        node_id=uuid.uuid4(),
        status=status,
        created_at=now,
        updated_at=now,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "model", "enum", "table"), TABLES, ids=[t[0] for t in TABLES])
def test_every_move_the_table_refuses_leaves_the_row_unchanged(
    name: str, model: Any, enum: Any, table: Table
) -> None:
    workflow = _workflow()
    later = timezone.now() + dt.timedelta(days=1)
    stamp = {"updated_at": later} if model in (Delivery, InboxMessage) else {}
    refused, written = [], []
    for frm in enum.values:
        for to in enum.values:
            if not any(to in tos for tos in table.values()):
                with pytest.raises(ValueError):
                    transition(model.objects.all(), to)
                continue
            row = _row(model, frm, workflow)
            before = model.objects.filter(pk=row.pk).values().get()
            with CaptureQueriesContext(connection) as queries:
                changed = transition(model.objects.filter(pk=row.pk), to, **stamp)
            assert len(queries) == 1  # the guard is the UPDATE's WHERE: no read first
            after = model.objects.filter(pk=row.pk).values().get()
            if to in table[frm]:
                assert (changed, after["status"]) == (1, to), (frm, to)
                written.append((frm, to))
            else:
                assert changed == 0, (frm, to)
                assert after == before, (frm, to)
                refused.append((frm, to))
    assert refused  # every table refuses something
    assert len(written) == sum(len(tos) for tos in table.values())


@pytest.mark.django_db
def test_a_callers_own_status_filter_still_applies() -> None:
    """``transition`` narrows a caller's guard, never widens it: a BUFFERED delivery may become
    PENDING, but not through a writer that takes CLAIMED rows only."""
    workflow = _workflow()
    row = _row(Delivery, DeliveryStatus.BUFFERED, workflow)
    rows = Delivery.objects.filter(pk=row.pk, status=DeliveryStatus.CLAIMED)
    assert transition(rows, DeliveryStatus.PENDING) == 0
    assert Delivery.objects.get(pk=row.pk).status == DeliveryStatus.BUFFERED
    assert transition(Delivery.objects.filter(pk=row.pk), DeliveryStatus.PENDING) == 1


def test_status_cannot_be_passed_twice() -> None:
    with pytest.raises(TypeError):
        transition(Timer.objects.none(), TimerStatus.FIRED, status=TimerStatus.CANCELLED)
