"""Node state in the workflow row: a workflow's nodes move from one ``Node`` row each into its own
row (``Workflow.nodes``, the first ``PAGE_SIZE`` nodes) and ``NodePage`` rows (the rest), with the
columns recovery reads (``leased_since``, ``resend_at``, ``stop_hooks_since``) computed from them.
Workflows in every status move, running ones included; a node's ``waiting`` is the attempt of
its PENDING timer, if it has one (docs/internals.md, "Node state in the workflow row").

Node rows are read with a server-side cursor in workflow order, in chunks, and the workflows
written in batches, so a large table never sits in memory. Stop the previous release's workers
first: they would write node rows. Reversible: unapplying writes the nodes back as rows.
"""

import datetime as dt
import uuid

import django.db.models.deletion
from django.db import migrations, models

CHUNK = 2000
#: engine/state.py PAGE_SIZE at this migration.
PAGE_SIZE = 64
#: models.NODE_FIELDS at this migration (the stored order); ``waiting`` is not a column of Node.
FIELDS = (
    "id",
    "parent_id",
    "name",
    "node_type",
    "kind",
    "task_class",
    "status",
    "position",
    "next_ids",
    "child_ids",
    "config",
    "attempts",
    "lease",
    "error",
    "time_created",
    "time_submitted",
    "time_completed",
    "updated_at",
    "redispatch_at",
    "redispatches",
    "stop_hook",
    "stop_hook_at",
)
TIMES = {"time_created", "time_submitted", "time_completed", "updated_at", "redispatch_at", "stop_hook_at"}


def _encode(values, waiting):
    """A node as stored at this migration (engine/state.py ``node_encode``), written out here so
    that the migration does not change when the application's code does."""
    out = []
    for name, value in zip(FIELDS, values, strict=True):
        if value is not None and (name in ("id", "parent_id")):
            value = str(value)
        elif value is not None and name in TIMES:
            value = value.isoformat()
        out.append(value)
    out.append(waiting)
    return out


def _marks(nodes):
    """(leased_since, resend_at, stop_hooks_since) as engine/state.py ``recovery_marks`` computes
    them, on the dict form of the nodes."""
    leased = resend = hooks = None
    for n in nodes:
        if n["redispatch_at"] is not None and (resend is None or n["redispatch_at"] < resend):
            resend = n["redispatch_at"]
        if n["stop_hook"] == "pending" and (hooks is None or n["updated_at"] < hooks):
            hooks = n["updated_at"]
        if (
            n["node_type"] == "LEAF"
            and n["redispatch_at"] is None
            and n["waiting"] is None
            and (n["status"] == "SUBMITTED" or (n["status"] == "EXECUTING" and n["kind"] != "listener"))
            and (leased is None or n["updated_at"] < leased)
        ):
            leased = n["updated_at"]
    return leased, resend, hooks


def rows_to_documents(apps, schema_editor):
    Node = apps.get_model("dagger_django", "Node")
    Workflow = apps.get_model("dagger_django", "Workflow")
    NodePage = apps.get_model("dagger_django", "NodePage")
    Timer = apps.get_model("dagger_django", "Timer")
    db = schema_editor.connection.alias
    rows = (
        Node.objects.using(db)
        .order_by("workflow_id", "position", "time_created", "id")
        .values_list("workflow_id", *FIELDS)
        .iterator(chunk_size=CHUNK)
    )
    workflows, pages = [], []

    def write():
        waiting = {}
        ids = [w for w, _ in workflows]
        for node_id, attempt in (
            Timer.objects.using(db)
            .filter(workflow_id__in=ids, status="PENDING")
            .order_by("id")
            .values_list("node_id", "attempt")
        ):
            waiting[node_id] = attempt
        for workflow_id, nodes in workflows:
            entries = []
            for n in nodes:
                n["waiting"] = waiting.get(n["id"])
                entries.append(_encode([n[f] for f in FIELDS], n["waiting"]))
            leased, resend, hooks = _marks(nodes)
            chunks = [entries[i : i + PAGE_SIZE] for i in range(0, len(entries), PAGE_SIZE)] or [[]]
            Workflow.objects.using(db).filter(pk=workflow_id).update(
                nodes=chunks[0],
                node_pages=len(chunks) - 1,
                leased_since=leased,
                resend_at=resend,
                stop_hooks_since=hooks,
            )
            pages.extend(
                NodePage(workflow_id=workflow_id, number=number, nodes=chunk)
                for number, chunk in enumerate(chunks[1:], start=1)
            )
        if pages:
            NodePage.objects.using(db).bulk_create(pages)
        workflows.clear()
        pages.clear()

    current = None
    for workflow_id, *values in rows:
        if current is None or current[0] != workflow_id:
            if len(workflows) >= CHUNK:
                write()
            current = (workflow_id, [])
            workflows.append(current)
        current[1].append(dict(zip(FIELDS, values, strict=True)))
    if workflows:
        write()


def _time(value):
    return None if value is None else dt.datetime.fromisoformat(value)


def documents_to_rows(apps, schema_editor):
    Node = apps.get_model("dagger_django", "Node")
    Workflow = apps.get_model("dagger_django", "Workflow")
    NodePage = apps.get_model("dagger_django", "NodePage")
    db = schema_editor.connection.alias
    pending = []

    def add(workflow_id, entries):
        for e in entries or ():
            values = dict(zip(FIELDS, e, strict=False))
            for name in TIMES:
                values[name] = _time(values[name])
            values["id"] = uuid.UUID(values["id"])
            values["parent_id"] = None if values["parent_id"] is None else uuid.UUID(values["parent_id"])
            pending.append(Node(workflow_id=workflow_id, **values))

    for workflow_id, entries in Workflow.objects.using(db).order_by("pk").values_list("id", "nodes").iterator(
        chunk_size=CHUNK
    ):
        add(workflow_id, entries)
        if len(pending) >= CHUNK:
            Node.objects.using(db).bulk_create(pending)
            pending.clear()
    for workflow_id, entries in (
        NodePage.objects.using(db).order_by("workflow_id", "number").values_list("workflow_id", "nodes").iterator(
            chunk_size=CHUNK
        )
    ):
        add(workflow_id, entries)
        if len(pending) >= CHUNK:
            Node.objects.using(db).bulk_create(pending)
            pending.clear()
    if pending:
        Node.objects.using(db).bulk_create(pending)


class Migration(migrations.Migration):

    dependencies = [
        ('dagger_django', '0011_inbox_replayed_by'),
    ]

    operations = [
        migrations.CreateModel(
            name='NodePage',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('number', models.PositiveIntegerField()),
                ('nodes', models.JSONField(default=list)),
                ('workflow', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='dagger_django.workflow')),
            ],
            options={
                'ordering': ['workflow', 'number'],
                'constraints': [models.UniqueConstraint(fields=('workflow', 'number'), name='dagger_nodepage_uniq')],
            },
        ),
        migrations.AddField(
            model_name='workflow',
            name='leased_since',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workflow',
            name='node_pages',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='workflow',
            name='nodes',
            field=models.JSONField(default=list),
        ),
        migrations.AddField(
            model_name='workflow',
            name='resend_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workflow',
            name='stop_hooks_since',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name='workflow',
            index=models.Index(condition=models.Q(('leased_since__isnull', False)), fields=['leased_since'], name='dagger_wf_leased'),
        ),
        migrations.AddIndex(
            model_name='workflow',
            index=models.Index(condition=models.Q(('resend_at__isnull', False)), fields=['resend_at'], name='dagger_wf_resend'),
        ),
        migrations.AddIndex(
            model_name='workflow',
            index=models.Index(condition=models.Q(('stop_hooks_since__isnull', False)), fields=['stop_hooks_since'], name='dagger_wf_stop_hooks'),
        ),
        migrations.RunPython(rows_to_documents, documents_to_rows),
        migrations.DeleteModel(
            name='Node',
        ),
    ]
