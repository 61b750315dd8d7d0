"""History as one row per workflow per transaction (``HistoryRecord``) instead of one row per
event (``TaskEvent``).

Existing rows are converted, running workflows included: a workflow's events are read in id (commit)
order, and a run of consecutive events with the same ``created_at`` becomes one record (every
event of a transaction was written with the transaction's clock reading, so they share it). Two
transactions of a workflow that follow each other with the very same ``created_at`` (a frozen or
coarse clock) therefore become one record; the events keep their order either way, and nothing
reads the transaction boundaries back. Rows are read with a server-side cursor, in chunks, and
written in batches, so a large table never sits in memory.

Reversible: unapplying explodes each record back into one ``TaskEvent`` row per event.
"""

import uuid

import django.db.models.deletion
from django.db import migrations, models

CHUNK = 2000

EVENT_COLUMNS = ("node_id", "node_name", "from_status", "to_status", "attempt", "reason", "detail")


def _event(node_id, node_name, from_status, to_status, attempt, reason, detail):
    """The encoding of ``HistoryRecord.events`` at this migration (models/history.py), written
    out here so that the migration does not change when the application's code does."""
    event = [None if node_id is None else str(node_id), node_name, from_status, to_status, attempt, reason]
    if detail:
        event.append(detail)
    return event


def events_to_records(apps, schema_editor):
    TaskEvent = apps.get_model("dagger_django", "TaskEvent")
    HistoryRecord = apps.get_model("dagger_django", "HistoryRecord")
    db = schema_editor.connection.alias
    rows = (
        TaskEvent.objects.using(db)
        .order_by("workflow_id", "id")
        .values_list("workflow_id", "created_at", *EVENT_COLUMNS)
        .iterator(chunk_size=CHUNK)
    )
    pending = []
    record = None
    for workflow_id, created_at, *event in rows:
        if record is None or record.workflow_id != workflow_id or record.created_at != created_at:
            if len(pending) >= CHUNK:
                HistoryRecord.objects.using(db).bulk_create(pending)
                pending = []
            record = HistoryRecord(workflow_id=workflow_id, created_at=created_at, events=[])
            pending.append(record)
        record.events.append(_event(*event))
    if pending:
        HistoryRecord.objects.using(db).bulk_create(pending)


def records_to_events(apps, schema_editor):
    TaskEvent = apps.get_model("dagger_django", "TaskEvent")
    HistoryRecord = apps.get_model("dagger_django", "HistoryRecord")
    db = schema_editor.connection.alias
    records = (
        HistoryRecord.objects.using(db)
        .order_by("workflow_id", "id")
        .values_list("workflow_id", "created_at", "events")
        .iterator(chunk_size=CHUNK)
    )
    pending = []
    for workflow_id, created_at, events in records:
        for event in events:
            node_id, node_name, from_status, to_status, attempt, reason = event[:6]
            pending.append(
                TaskEvent(
                    workflow_id=workflow_id,
                    node_id=None if node_id is None else uuid.UUID(node_id),
                    node_name=node_name,
                    from_status=from_status,
                    to_status=to_status,
                    attempt=attempt,
                    reason=reason,
                    detail=event[6] if len(event) > 6 else {},
                    created_at=created_at,
                )
            )
        if len(pending) >= CHUNK:
            TaskEvent.objects.using(db).bulk_create(pending)
            pending = []
    if pending:
        TaskEvent.objects.using(db).bulk_create(pending)


class Migration(migrations.Migration):

    dependencies = [
        ('dagger_django', '0008_delivery_heartbeat'),
    ]

    operations = [
        migrations.CreateModel(
            name='HistoryRecord',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('created_at', models.DateTimeField()),
                ('events', models.JSONField(default=list)),
                ('workflow', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='history', to='dagger_django.workflow')),
            ],
            options={
                'ordering': ['id'],
                'indexes': [models.Index(fields=['workflow', 'id'], name='dagger_history_workflow_id')],
            },
        ),
        migrations.RunPython(events_to_records, records_to_events),
        migrations.DeleteModel(
            name='TaskEvent',
        ),
    ]
