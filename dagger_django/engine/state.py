"""One workflow's state inside one transaction, and the only code that changes a status.

A transition locks the workflow row, which holds its nodes (the first ``PAGE_SIZE`` of them;
``NodePage`` rows hold the rest), makes them :class:`~dagger_django.models.Node` objects in a
:class:`WorkflowState`, lets the walker (:mod:`.walker`) change them in memory through
:meth:`WorkflowState.set_status`, which checks the transition table and records a history event,
and then :meth:`WorkflowState.flush` writes everything back in a fixed, small number of
statements (one per table touched: the workflow row with its changed nodes and recovery marks,
the changed pages, the transition's history events in one row). The lock on the workflow row is
what makes the in-memory update safe: no other transaction can change these rows until we commit.
How the nodes are stored is known here only (:func:`node_encode`, :func:`node_decode`,
:func:`nodes_read`; docs/internals.md, "Node state in the workflow row").
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import connections, router
from django.db.models import (
    BooleanField,
    CharField,
    DateTimeField,
    ForeignKey,
    IntegerField,
    JSONField,
    Model,
    TextField,
    UUIDField,
)
from django.db.models.fields import AutoFieldMixin

from ..exceptions import TaskInvalidState
from ..models import HistoryRecord, Node, NodePage, NodeType, Status, StopHook, Timer, Workflow
from ..models.history import history_event
from ..models.status import TERMINAL, TIMER_TRANSITIONS, NodeKind, sole_source, transition
from . import ports

T = TypeVar("T")

S = Status

#: Allowed node transitions. Anything else is a bug in the engine and raises.
NODE_TRANSITIONS: dict[str, frozenset[str]] = {
    S.NOT_STARTED: frozenset({S.SUBMITTED, S.EXECUTING, S.SKIPPED, S.STOPPED, S.FAILURE}),
    # SUBMITTED -> COMPLETED: an operator completes a node waiting for its retry's backoff.
    S.SUBMITTED: frozenset({S.EXECUTING, S.SKIPPED, S.STOPPED, S.FAILURE, S.COMPLETED}),
    # EXECUTING -> SUBMITTED: a retry is scheduled, or a lost worker's node is handed out again.
    S.EXECUTING: frozenset({S.COMPLETED, S.FAILURE, S.SKIPPED, S.STOPPED, S.SUBMITTED}),
    # FAILURE -> SUBMITTED/EXECUTING: the workflow is retried from its failed node.
    # FAILURE -> SKIPPED/COMPLETED: an operator skips or completes the failed node
    # (engine/operations.py: node_skip, node_complete).
    S.FAILURE: frozenset({S.SUBMITTED, S.EXECUTING, S.STOPPED, S.SKIPPED, S.COMPLETED}),
    # A listener with allow_skip_to still accepts its message after it was skipped.
    S.SKIPPED: frozenset({S.EXECUTING, S.COMPLETED}),
    S.COMPLETED: frozenset(),
    # STOPPED -> ...: the workflow is resumed (operations.workflow_resume); each node the stop
    # ended goes back to where it stood (not started, handed to a worker, or waiting).
    S.STOPPED: frozenset({S.NOT_STARTED, S.SUBMITTED, S.EXECUTING}),
}

WORKFLOW_TRANSITIONS: dict[str, frozenset[str]] = {
    S.NOT_STARTED: frozenset({S.EXECUTING, S.STOPPED}),
    S.SUBMITTED: frozenset({S.EXECUTING, S.STOPPED}),
    S.EXECUTING: frozenset({S.COMPLETED, S.FAILURE, S.SKIPPED, S.STOPPED}),
    S.FAILURE: frozenset({S.EXECUTING, S.STOPPED}),
    S.COMPLETED: frozenset(),
    S.SKIPPED: frozenset(),
    # STOPPED -> EXECUTING/FAILURE: resumed (operations.workflow_resume), back to the status it
    # was stopped in.
    S.STOPPED: frozenset({S.EXECUTING, S.FAILURE}),
}

#: Nodes per page: the first page is stored in the workflow row (``Workflow.nodes``), the others in
#: ``NodePage`` rows. A step rewrites the pages whose nodes it changed, never all of a large
#: workflow's nodes (docs/internals.md, "Node state in the workflow row").
PAGE_SIZE = 64

#: The workflow columns :meth:`WorkflowState.flush` keeps for recovery's indexes (:func:`recovery_marks`).
MARK_FIELDS = ("leased_since", "resend_at", "stop_hooks_since")


def update_rows(model: type[Model], fields: list[str], objs: list[Any]) -> None:
    """``UPDATE <table> SET <fields> WHERE pk = ...`` for each object, in one ``executemany``.

    The engine's hot path writes a handful of rows per transition. Django's ``bulk_update``
    builds a ``CASE WHEN`` expression per field and object, which costs milliseconds of Python
    per call; a prepared statement sent once per row (psycopg pipelines ``executemany``) costs
    microseconds. Values are prepared as the ORM would (:func:`field_preparers`).
    """
    meta = model._meta
    conn = connections[router.db_for_write(model)]
    key = (conn.alias, "update", model, tuple(fields))
    cached = _STATEMENTS.get(key)
    if cached is None:
        qn = conn.ops.quote_name
        model_fields = [meta.get_field(f) for f in fields]
        pk = meta.pk
        assert pk is not None
        sql = "UPDATE {} SET {} WHERE {} = %s".format(
            qn(meta.db_table), ", ".join(f"{qn(f.column)} = %s" for f in model_fields), qn(pk.column)
        )
        cached = _STATEMENTS[key] = (sql, field_preparers(conn, [*model_fields, pk]))
    sql, preparers = cached
    if len(objs) > 1 and conn.vendor == "postgresql" and len({obj.pk for obj in objs}) == len(objs):
        _update_arrays(conn, model, fields, objs)
        return
    params = [[prep(getattr(obj, attname), conn) for attname, prep in preparers] for obj in objs]
    with conn.cursor() as cursor:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)


def _update_arrays(conn: Any, model: type[Model], fields: list[str], objs: list[Any]) -> None:
    """:func:`update_rows` of many rows on PostgreSQL: one ``UPDATE ... FROM unnest(...)`` with an
    array per column, instead of one statement per row (a batch of 50 workflows made 50)."""
    binary = _binary_params(conn)

    def build() -> tuple[str, list[tuple[str, Any, Any]]]:
        meta = model._meta
        qn = conn.ops.quote_name
        pk = meta.pk
        assert pk is not None
        model_fields = [meta.get_field(f) for f in fields]
        placeholder = "%b" if binary else "%s"
        columns = [pk, *model_fields]
        types = [pk.rel_db_type(conn), *(f.db_type(conn) for f in model_fields)]
        names = [f"c{i}" for i in range(len(columns))]
        sql = "UPDATE {} AS t SET {} FROM unnest({}) AS v({}) WHERE t.{} = v.c0".format(
            qn(meta.db_table),
            ", ".join(f"{qn(f.column)} = v.{name}" for f, name in zip(model_fields, names[1:], strict=True)),
            ", ".join(f"{placeholder}::{db_type}[]" for db_type in types),
            ", ".join(names),
            qn(pk.column),
        )
        preparers = field_preparers(conn, columns)
        return sql, [(name, prep, None) for name, prep in preparers]

    cached = _compiled((conn.alias, "update_arrays", model, tuple(fields), binary), build)
    sql, preparers = cached
    params = [[prep(_plain(getattr(obj, attname)), conn) for obj in objs] for attname, prep, _ in preparers]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)


def insert_rows(model: type[Model], objs: list[Any]) -> None:
    """``INSERT`` rows of a model whose key is set before the insert (or is an auto id we do
    not need back). Same reasoning as :func:`update_rows`: ``save`` and ``bulk_create``
    compile a query on every call. The objects are marked as saved, as the ORM would."""
    meta = model._meta
    conn = connections[router.db_for_write(model)]
    key = (conn.alias, "insert", model, ())
    cached = _STATEMENTS.get(key)
    if cached is None:
        qn = conn.ops.quote_name
        model_fields = [f for f in meta.concrete_fields if not f.primary_key or not f.auto_created]
        model_fields = [f for f in model_fields if not getattr(f, "db_returning", False)]
        assert not any(
            getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False) for f in model_fields
        )
        sql = "INSERT INTO {} ({}) VALUES ({})".format(
            qn(meta.db_table),
            ", ".join(qn(f.column) for f in model_fields),
            ", ".join(["%s"] * len(model_fields)),
        )
        cached = _STATEMENTS[key] = (sql, field_preparers(conn, model_fields))
    sql, preparers = cached
    params = [[prep(getattr(obj, attname), conn) for attname, prep in preparers] for obj in objs]
    with conn.cursor() as cursor:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)
    for obj in objs:
        obj._state.adding = False
        obj._state.db = conn.alias


def insert_arrays(
    model: type[Model], rows: list[dict[str, Any]], *, returning_ids: bool = False
) -> list[Any]:
    """``INSERT`` many rows of a model in one statement with one array parameter per column
    (``INSERT ... SELECT ... FROM unnest(...)``) on PostgreSQL; elsewhere ``bulk_create``.

    ``rows`` are ``{attname: value}``; a column a row leaves out takes the field's default, and
    an auto key is left to the database. For the bridge's batches: ``bulk_create`` builds a model
    per row and compiles a ``VALUES`` list of one parameter per field and row (8,500 for 500
    inbox rows), most of a batch's Python; here a row is a dictionary and a column one array,
    sent in binary when the connection binds parameters server-side. With ``returning_ids`` the
    statement draws the keys from the table's sequence and returns them in the order of
    ``rows`` (each row's position travels with it): the list of keys, else ``[]``.
    """
    if not rows:
        return []
    meta = model._meta
    conn = connections[router.db_for_write(model)]
    if conn.vendor != "postgresql":
        objs = model.objects.bulk_create([model(**row) for row in rows])
        return [obj.pk for obj in objs] if returning_ids else []
    binary = _binary_params(conn)

    def build() -> tuple[str, list[tuple[str, Any, Any]]]:
        qn = conn.ops.quote_name
        pk = meta.pk
        assert pk is not None
        model_fields = [f for f in meta.concrete_fields if not (f is pk and isinstance(f, AutoFieldMixin))]
        assert not any(
            getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False) for f in model_fields
        )
        columns = ", ".join(qn(f.column) for f in model_fields)
        placeholder = "%b" if binary else "%s"
        arrays = ", ".join(f"{placeholder}::{f.db_type(conn)}[]" for f in model_fields)
        # The rows in the order given (ORDER BY their position), so that keys drawn from the
        # sequence ascend with it: a listener takes its deliveries in key order.
        names = ", ".join(f"c{i}" for i in range(len(model_fields)))
        table = qn(meta.db_table)
        rows_sql = f"SELECT * FROM unnest({arrays}) WITH ORDINALITY AS u({names}, ord) ORDER BY ord"
        if returning_ids:
            sql = (
                f"WITH v AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('{table}', '{pk.column}'))"
                f" AS id, u.* FROM ({rows_sql}) AS u),"
                f" ins AS (INSERT INTO {table} ({qn(pk.column)}, {columns}) SELECT id, {names} FROM v)"
                " SELECT id FROM v ORDER BY ord"
            )
        else:
            sql = f"INSERT INTO {table} ({columns}) SELECT {names} FROM ({rows_sql}) AS u"
        preparers = field_preparers(conn, model_fields)
        fields = {f.attname: f for f in model_fields}
        return sql, [(name, prep, fields[name]) for name, prep in preparers]

    cached = _compiled((conn.alias, "insert_arrays", model, returning_ids, binary), build)
    sql, columns_of = cached
    params = []
    for attname, prep, f in columns_of:
        missing = _NO_VALUE
        values = []
        for row in rows:
            value = row.get(attname, _NO_VALUE)
            if value is _NO_VALUE:
                # A constant default is computed once; a callable one (a uuid4, a now) per row.
                if f.has_default() and callable(f.default):
                    value = f.get_default()
                else:
                    if missing is _NO_VALUE:
                        missing = f.get_default()
                    value = missing
            values.append(prep(_plain(value), conn))
        params.append(values)
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()] if returning_ids else []


_NO_VALUE = object()


def _binary_params(conn: Any) -> bool:
    """Whether this connection can take parameters in binary (``%b``, much cheaper to prepare
    for arrays): one whose cursors bind server-side (psycopg's ``Cursor``, the setting
    ``server_side_binding``); a ``ClientCursor`` quotes parameters into the SQL text instead."""
    try:
        from psycopg import ClientCursor
    except ImportError:  # pragma: no cover - psycopg2
        return False
    conn.ensure_connection()
    factory = getattr(conn.connection, "cursor_factory", None)
    return isinstance(factory, type) and not issubclass(factory, ClientCursor)


def _plain(value: Any) -> Any:
    """A text choice (``Status.ROUTED``) as the plain string it stores; other values as they are."""
    return str.__str__(value) if isinstance(value, str) and type(value) is not str else value


#: Statements composed once per process (:func:`_compiled`): their SQL depends only on the
#: connection's backend and the models, so it is built at first use, then looked up.
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def _compiled(key: tuple[Any, ...], build: Callable[[], T]) -> T:
    """What ``build`` makes for ``key`` (the connection's alias first, then what else the
    statement depends on), built at its first use in this process and kept."""
    try:
        return _STATEMENTS[key]  # type: ignore[no-any-return]
    except KeyError:
        made = _STATEMENTS[key] = build()
        return made


#: (alias, verb, model, fields) -> (SQL, [(attname, prepare)]): built once per process.
_STATEMENTS: dict[tuple[Any, ...], tuple[str, list[tuple[str, Any]]]] = {}


def _plain_types(f: Any) -> tuple[type, ...]:
    """The value types that ``f.get_db_prep_save`` hands to PostgreSQL unchanged."""
    if isinstance(f, ForeignKey):
        return _plain_types(f.target_field)  # a key is prepared by the field it points to
    if isinstance(f, BooleanField):
        return (bool, type(None))
    if isinstance(f, IntegerField):
        return (int, type(None))
    if isinstance(f, UUIDField):
        return (uuid.UUID, type(None))
    return ()


def field_preparers(conn: Any, fields: list[Any]) -> list[tuple[str, Any]]:
    """For each field, ``(attname, (value, connection) -> database value)``, as
    ``get_db_prep_save`` would do.

    On PostgreSQL that call is the identity for text (``str`` and its subclasses such as
    ``Status``), integers, booleans, UUIDs and aware datetimes, and wraps JSON: those values skip
    it (it is most of the Python cost of a write). Any other value, or any other database, goes
    through the field itself. The connection is the caller's (connections are per thread).
    """
    postgres = conn.vendor == "postgresql"
    out: list[tuple[str, Any]] = []
    for f in fields:

        def slow(value: Any, conn: Any, f: Any = f) -> Any:
            return f.get_db_prep_save(value, conn)

        prep: Any = slow
        plain = _plain_types(f)
        if not postgres:
            pass
        elif isinstance(f, JSONField) and type(f).get_db_prep_save is JSONField.get_db_prep_save:

            def prep(value: Any, conn: Any, f: Any = f) -> Any:
                return None if value is None else conn.ops.adapt_json_value(value, f.encoder)

        elif isinstance(f, DateTimeField):

            def prep(value: Any, conn: Any, slow: Any = slow) -> Any:
                if value is None or (isinstance(value, dt.datetime) and value.tzinfo is not None):
                    return value
                return slow(value, conn)

        elif isinstance(f, CharField | TextField):

            def prep(value: Any, conn: Any, slow: Any = slow) -> Any:
                return value if value is None or isinstance(value, str) else slow(value, conn)

        elif plain:

            def prep(value: Any, conn: Any, slow: Any = slow, plain: tuple[type, ...] = plain) -> Any:
                return value if type(value) in plain else slow(value, conn)

        out.append((f.attname, prep))
    return out


# -- nodes as stored: lists in the order of NODE_FIELDS ---------------------------------------------
def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def node_encode(n: Node) -> list[Any]:
    """A node as ``Workflow.nodes`` and ``NodePage.nodes`` store it (``models.NODE_FIELDS``)."""
    return [
        str(n.id),
        None if n.parent_id is None else str(n.parent_id),
        n.name,
        n.node_type,
        n.kind,
        n.task_class,
        n.status,
        n.position,
        n.next_ids,
        n.child_ids,
        n.config,
        n.attempts,
        n.lease,
        n.error,
        _iso(n.time_created),
        _iso(n.time_submitted),
        _iso(n.time_completed),
        _iso(n.updated_at),
        _iso(n.redispatch_at),
        n.redispatches,
        n.stop_hook,
        _iso(n.stop_hook_at),
        n.waiting,
    ]


def node_decode(e: list[Any], workflow_id: uuid.UUID, page: int) -> Node:
    """The node stored as ``e`` (:func:`node_encode`) on ``page`` of ``workflow_id``."""
    n = Node.__new__(Node)
    n.id = uuid.UUID(e[0])
    n.parent_id = None if e[1] is None else uuid.UUID(e[1])
    n.name, n.node_type, n.kind, n.task_class, n.status, n.position = e[2], e[3], e[4], e[5], e[6], e[7]
    n.next_ids, n.child_ids, n.config, n.attempts, n.lease, n.error = e[8], e[9], e[10], e[11], e[12], e[13]
    n.time_created, n.time_submitted, n.time_completed = _time(e[14]), _time(e[15]), _time(e[16])
    n.updated_at, n.redispatch_at, n.redispatches = _time(e[17]), _time(e[18]), e[19]  # type: ignore[assignment]
    n.stop_hook, n.stop_hook_at, n.waiting = e[20], _time(e[21]), e[22]
    n.workflow_id = workflow_id
    n.page = page
    return n


_NODE_SLOTS = Node.__slots__


def node_copy(n: Node) -> Node:
    """A copy of ``n`` whose fields can be set without changing ``n`` (its values are shared:
    change ``config`` or a list by replacing it)."""
    c = Node.__new__(Node)
    for name in _NODE_SLOTS:
        setattr(c, name, getattr(n, name))
    return c


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def nodes_decode(workflow_id: uuid.UUID, first: Any, pages: Iterable[tuple[int, Any]] = ()) -> list[Node]:
    """A workflow's nodes from its first page (``Workflow.nodes``) and its further pages
    (``(number, nodes)`` of its ``NodePage`` rows), in the order they were stored."""
    out = [node_decode(e, workflow_id, 0) for e in _json(first) or ()]
    for number, entries in pages:
        out.extend(node_decode(e, workflow_id, number) for e in _json(entries) or ())
    return out


def recovery_marks(
    nodes: Iterable[Node],
) -> tuple[dt.datetime | None, dt.datetime | None, dt.datetime | None]:
    """``(leased_since, resend_at, stop_hooks_since)`` of a workflow with ``nodes``: what its
    indexed columns tell recovery (``Workflow`` model). Leased work is a task SUBMITTED, or
    EXECUTING and not a listener, that owes no re-send and waits on no timer."""
    leased = resend = hooks = None
    for n in nodes:
        if n.redispatch_at is not None and (resend is None or n.redispatch_at < resend):
            resend = n.redispatch_at
        if n.stop_hook == StopHook.PENDING and (hooks is None or n.updated_at < hooks):
            hooks = n.updated_at
        if (
            n.node_type == NodeType.LEAF
            and n.redispatch_at is None
            and n.waiting is None
            and (n.status == S.SUBMITTED or (n.status == S.EXECUTING and n.kind != NodeKind.LISTENER))
            and (leased is None or n.updated_at < leased)
        ):
            leased = n.updated_at
    return leased, resend, hooks


def _pages_read(cursor: Any, conn: Any, workflow_ids: list[Any]) -> dict[Any, list[tuple[int, Any]]]:
    """``{workflow id: [(number, nodes), ...]}`` of the further pages of ``workflow_ids``."""
    sql = _compiled(
        (conn.alias, "pages_read"),
        lambda: (
            f"SELECT workflow_id, number, nodes FROM {conn.ops.quote_name(NodePage._meta.db_table)}"
            " WHERE workflow_id = ANY(%s) ORDER BY workflow_id, number"
        ),
    )
    out: dict[Any, list[tuple[int, Any]]] = defaultdict(list)
    if conn.vendor != "postgresql":
        rows = NodePage.objects.filter(workflow_id__in=workflow_ids).order_by("workflow_id", "number")
        for page in rows:
            out[page.workflow_id].append((page.number, page.nodes))
        return out
    prep = Workflow._meta.pk.get_db_prep_value  # type: ignore[union-attr]
    cursor.execute(sql, [[prep(i, conn) for i in workflow_ids]])
    for workflow_id, number, entries in cursor.fetchall():
        key = workflow_id if isinstance(workflow_id, uuid.UUID) else uuid.UUID(str(workflow_id))
        out[key].append((number, entries))
    return out


def _with_nodes(cursor: Any, conn: Any, workflows: list[Workflow]) -> list[tuple[Workflow, list[Node]]]:
    paged = [wf.pk for wf in workflows if wf.node_pages]
    pages = _pages_read(cursor, conn, paged) if paged else {}
    return [(wf, nodes_decode(wf.pk, wf.nodes, pages.get(wf.pk, ()))) for wf in workflows]


def load_locked(workflow_id: Any) -> tuple[Workflow | None, list[Node]]:
    """Lock a workflow row (``FOR UPDATE``) and read its nodes: one plain statement (two when the
    workflow has more than one page of nodes).

    Written as raw SQL on a cursor, compiled once per process, and the row made into a model
    with ``Model.from_db`` and each field's converters: the ORM (even ``raw()``) would compile
    the query and its converters on every transition, which costs more than running it.
    """
    conn = connections[router.db_for_write(Workflow)]
    loader = _LOADERS.get(conn.alias)
    if loader is None:
        loader = _LOADERS[conn.alias] = _RowLoader(conn, Workflow, "id", lock=True)
    key = Workflow._meta.pk.get_db_prep_value(workflow_id, conn)  # type: ignore[union-attr]
    with conn.cursor() as cursor:
        workflows = loader.load(cursor, key, conn)
        if not workflows:
            return None, []
        return _with_nodes(cursor, conn, workflows)[0]


def load_locked_many(workflow_ids: Iterable[Any]) -> dict[Any, tuple[Workflow, list[Node]]]:
    """Lock many workflow rows and read their nodes: ``{workflow id: (workflow, nodes)}``.

    One statement on PostgreSQL whatever the number of workflows (two when some have further
    pages of nodes): the rows are locked in id order (``ORDER BY id FOR UPDATE``), so two batches
    that share workflows wait on each other instead of deadlocking. Workflows that do not exist
    are missing from the answer. Elsewhere (SQLite serialises its writers) one
    :func:`load_locked` per workflow.
    """
    ids = sorted(set(workflow_ids), key=str)
    conn = connections[router.db_for_write(Workflow)]
    if conn.vendor != "postgresql":
        out: dict[Any, tuple[Workflow, list[Node]]] = {}
        for workflow_id in ids:
            wf, nodes = load_locked(workflow_id)
            if wf is not None:
                out[wf.pk] = (wf, nodes)
        return out
    loader = _MANY_LOADERS.get(conn.alias)
    if loader is None:
        loader = _MANY_LOADERS[conn.alias] = _RowLoader(conn, Workflow, "id", lock=True, many=True)
    prep = Workflow._meta.pk.get_db_prep_value  # type: ignore[union-attr]
    keys = [prep(i, conn) for i in ids]
    with conn.cursor() as cursor:
        workflows = loader.load(cursor, keys, conn)
        if not workflows:
            return {}
        return {wf.pk: (wf, nodes) for wf, nodes in _with_nodes(cursor, conn, workflows)}


def nodes_read_many(workflow_ids: Iterable[Any]) -> dict[uuid.UUID, list[Node]]:
    """The nodes of ``workflow_ids`` as committed, without a lock (for reading: selectors,
    recovery's candidates, a stop hook's view): ``{workflow id: nodes}``, two queries at most.
    Workflows that do not exist are missing."""
    ids = list(workflow_ids)
    if not ids:
        return {}
    rows = list(Workflow.objects.filter(pk__in=ids).order_by().values_list("id", "nodes", "node_pages"))
    paged = [pk for pk, _, pages in rows if pages]
    conn = connections[router.db_for_read(Workflow)]
    pages: dict[Any, list[tuple[int, Any]]] = {}
    if paged:
        with conn.cursor() as cursor:
            pages = _pages_read(cursor, conn, paged)
    return {pk: nodes_decode(pk, first, pages.get(pk, ())) for pk, first, _ in rows}


def nodes_read(workflow_id: Any) -> list[Node]:
    """The nodes of one workflow as committed, without a lock (:func:`nodes_read_many`)."""
    return next(iter(nodes_read_many([workflow_id]).values()), [])


class _RowLoader:
    """``SELECT <every column> FROM <table> WHERE <column> = %s`` (``= ANY(%s)`` with ``many``,
    locked rows in key order) made into model instances. With ``xid`` (PostgreSQL) the statement
    also reads this transaction's id (:class:`Reuse`), which :meth:`load` appends to ``xids``."""

    def __init__(
        self, conn: Any, model: type[Model], where: str, *, lock: bool, many: bool = False, xid: bool = False
    ) -> None:
        meta = model._meta
        qn = conn.ops.quote_name
        fields = list(meta.concrete_fields)
        tail = " FOR UPDATE" if lock and conn.features.has_select_for_update else ""
        if many and lock:
            tail = f" ORDER BY {qn(where)}{tail}"
        self.xid = xid
        self.sql = "SELECT {}{} FROM {} WHERE {} = {}{}".format(
            ", ".join(qn(f.column) for f in fields),
            f", {_XID_SQL}" if xid else "",
            qn(meta.db_table),
            qn(where),
            "ANY(%s)" if many else "%s",
            tail,
        )
        self.model = model
        self.alias = conn.alias
        self.converters = []
        for i, f in enumerate(fields):
            col = f.get_col(meta.db_table)
            found = [*conn.ops.get_db_converters(col), *col.get_db_converters(conn)]
            if found:
                self.converters.append((i, found, col))

    def load(self, cursor: Any, key: Any, conn: Any, xids: list[int] | None = None) -> list[Any]:
        cursor.execute(self.sql, [key])
        out = []
        for raw in cursor.fetchall():
            values = list(raw)
            if self.xid:
                xid = int(values.pop())
                if xids is not None:
                    xids.append(xid)
            for i, converters, col in self.converters:
                value = values[i]
                for convert in converters:
                    value = convert(value, col, conn)
                values[i] = value
            out.append(self.model.from_db(self.alias, None, values))
        return out


_LOADERS: dict[str, _RowLoader] = {}
_MANY_LOADERS: dict[str, _RowLoader] = {}

#: This transaction's id as a row's ``xmin`` shows the rows it writes (the low 32 bits).
_XID_SQL = "mod(txid_current(), 4294967296)"


class Reuse:
    """The workflows a batch wrote in its last transaction, kept in memory for its next one.

    A batch (``services.nodes_run``) locks the same workflows transaction after transaction:
    claim, apply and claim the next step, apply again. Loading them each time (every node
    document transferred, decoded and made into objects) was a sixth of a worker's Python. With
    a :class:`Reuse` passed to ``txn.locked_many``, a transaction that locks workflows the last
    one wrote locks them with a narrow statement (``SELECT id, xmin ... FOR UPDATE``) and takes
    from memory those whose row version is still the one that transaction's write made (its
    ``xmin`` is that transaction's id): nobody wrote the row since (a heartbeat, an operator, a
    sweep, another worker). The others are loaded as usual, in the same transaction, under the
    lock already held. Every write of a workflow's nodes, further pages included, writes its row
    (:meth:`WorkflowState._pages_settle`), so the row's version covers its pages.

    What is kept is only what a transaction committed without savepoints (a row written in a
    savepoint carries the savepoint's id, and such a batch keeps nothing); an attempt rolled back
    drops it all (:meth:`drop`), and a kept workflow is handed out once, to the next transaction
    only. What is kept is the workflow object and its nodes as written: nothing may change them
    after the commit (a ``checkpoint="process"`` chain moves copies on: ``services._chained``).
    PostgreSQL only; elsewhere every transaction loads.
    """

    def __init__(self) -> None:
        self.kept: dict[Any, tuple[int, Workflow, list[Node]]] = {}
        self.xid: int | None = None
        self.written: list[WorkflowState] = []
        #: Workflows taken from memory and loaded, over the batch (tests, benchmarks).
        self.reused = 0
        self.loaded = 0

    def lock(self, workflow_ids: Iterable[Any]) -> dict[Any, tuple[Workflow, list[Node]]]:
        """``load_locked_many`` of ``workflow_ids``, from memory where the rows did not change."""
        kept, self.kept = self.kept, {}
        self.xid, self.written = None, []
        conn = connections[router.db_for_write(Workflow)]
        if conn.vendor != "postgresql":
            return load_locked_many(workflow_ids)
        ids = sorted(set(workflow_ids), key=str)
        prep = Workflow._meta.pk.get_db_prep_value  # type: ignore[union-attr]
        out: dict[Any, tuple[Workflow, list[Node]]] = {}
        with conn.cursor() as cursor:
            todo = ids
            if any(i in kept for i in ids):
                sql = _compiled(
                    (conn.alias, "lock_narrow"),
                    lambda: (
                        f"SELECT id, xmin::text::bigint, {_XID_SQL}"
                        f" FROM {conn.ops.quote_name(Workflow._meta.db_table)}"
                        " WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
                    ),
                )
                # Every row is locked here, in id order; the rows to load are read under that lock.
                cursor.execute(sql, [[prep(i, conn) for i in ids]])
                todo = []
                for workflow_id, xmin, xid in cursor.fetchall():
                    self.xid = int(xid)
                    key = workflow_id if isinstance(workflow_id, uuid.UUID) else uuid.UUID(str(workflow_id))
                    entry = kept.get(key)
                    if entry is not None and entry[0] == int(xmin):
                        out[key] = (entry[1], entry[2])
                    else:
                        todo.append(key)
                self.reused += len(out)
            if todo:
                loader = _XID_LOADERS.get(conn.alias)
                if loader is None:
                    loader = _XID_LOADERS[conn.alias] = _RowLoader(
                        conn, Workflow, "id", lock=True, many=True, xid=True
                    )
                xids: list[int] = []
                workflows = loader.load(cursor, [prep(i, conn) for i in todo], conn, xids)
                if workflows:
                    self.xid = xids[0]
                    self.loaded += len(workflows)
                    out.update((wf.pk, (wf, nodes)) for wf, nodes in _with_nodes(cursor, conn, workflows))
        return out

    def keep(self, states: Iterable[WorkflowState]) -> None:
        """Inside the transaction, after ``states`` were written (:func:`flush_many`, no
        savepoints): keep those whose row was written, once the transaction commits."""
        self.written = [
            s for s in states if s._settled and s._workflow_fields and not s.is_new and not s.delete_after
        ]

    def committed(self) -> None:
        """The transaction committed: keep what :meth:`keep` was given, as of its id."""
        xid = self.xid
        if xid is not None:
            self.kept = {s.workflow.pk: (xid, s.workflow, list(s.nodes.values())) for s in self.written}
        self.written, self.xid = [], None

    def drop(self) -> None:
        """The transaction did not commit (or was not the outermost): keep nothing."""
        self.kept, self.written, self.xid = {}, [], None


_XID_LOADERS: dict[str, _RowLoader] = {}


@contextmanager
def _pipeline() -> Iterator[None]:
    conn = connections[router.db_for_write(Workflow)]
    raw = conn.connection
    if conn.vendor == "postgresql" and raw is not None and hasattr(raw, "pipeline"):
        # Errors surface when the pipeline syncs, outside Django's cursor wrapper: map them to
        # Django's exceptions (IntegrityError, ...) like any other statement's.
        with conn.wrap_database_errors, raw.pipeline():
            yield
    else:
        yield


class WorkflowState:
    """The locked workflow, its nodes, and everything a transition will write or send."""

    def __init__(self, workflow: Workflow, nodes: Iterable[Node], *, is_new: bool = False) -> None:
        self.workflow = workflow
        self.nodes: dict[uuid.UUID, Node] = {n.id: n for n in nodes}
        self.is_new = is_new
        self.now = ports.now()
        self._dirty: set[uuid.UUID] = set()
        self._added: list[Node] = []
        #: Further pages of nodes to write (number -> nodes), settled by the flush.
        self.pages: dict[int, list[Node]] = {}
        self._workflow_fields: set[str] = set()
        #: This transition's history, in order: written as one :class:`HistoryRecord` row.
        self.events: list[list[Any]] = []
        self.timers: list[Timer] = []
        self.cancel_timers_for: set[uuid.UUID | None] = set()
        #: Nodes to hand to a worker after commit (``Dispatcher.run_node``).
        self.to_dispatch: list[uuid.UUID] = []
        #: EXECUTING nodes that were stopped: their ``stop`` hooks are recorded PENDING on the
        #: node in this transaction (``txn.commit``) and run by a worker after commit.
        self.to_stop_hooks: list[uuid.UUID] = []
        #: (node or None, from, to) for signals after commit.
        self.changes: list[tuple[Node | None, str, str]] = []
        #: Nodes that reached a terminal status in this transition (their timers and
        #: subscriptions are closed before the flush).
        self.ended: list[Node] = []
        self.delete_after = False
        self.parameters_changed = False
        #: Writes to other tables that a batch makes with one statement for all its workflows
        #: (``txn.deferred_write``): deliveries by id (``messages._DeliveryWrite``), and
        #: the subscriptions to delete, of listeners that are done (``correlation.before_flush``)
        #: and of a workflow that ended (``subscriptions_kept``: all but these; None: it did not).
        self.delivery_writes: dict[int, Any] = {}
        self.subscriptions_done: list[uuid.UUID] = []
        self.subscriptions_kept: list[uuid.UUID] | None = None
        self._settled: bool | None = None
        self._children: dict[uuid.UUID | None, list[Node]] | None = None

    # -- lookups --------------------------------------------------------------------------------
    def node(self, node_id: uuid.UUID | str) -> Node:
        key = node_id if isinstance(node_id, uuid.UUID) else uuid.UUID(str(node_id))
        return self.nodes[key]

    def get(self, node_id: uuid.UUID | str | None) -> Node | None:
        if node_id is None:
            return None
        try:
            return self.node(node_id)
        except (KeyError, ValueError):
            return None

    def children(self, parent_id: uuid.UUID | None) -> list[Node]:
        if self._children is None:
            index: dict[uuid.UUID | None, list[Node]] = defaultdict(list)
            for n in sorted(self.nodes.values(), key=lambda n: n.position):
                index[n.parent_id].append(n)
            self._children = index
        return self._children.get(parent_id, [])

    def descendants(self, node: Node) -> list[Node]:
        out: list[Node] = []
        stack = list(self.children(node.id))
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(self.children(n.id))
        return out

    @property
    def active(self) -> bool:
        return self.workflow.status == S.EXECUTING

    # -- the only writers of status ---------------------------------------------------------------
    def set_status(
        self,
        node: Node,
        to: str,
        *,
        reason: str,
        detail: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        frm = node.status
        if to == frm:
            return
        if to not in NODE_TRANSITIONS[frm]:
            raise TaskInvalidState(f"{node.name}: {frm} -> {to} is not an allowed transition ({reason})")
        node.status = to
        if node.redispatch_at is not None and frm == S.SUBMITTED:
            # Claimed, stopped or skipped: whatever message it was owed is no longer wanted.
            node.redispatch_at = None
            node.redispatches = 0
        if to == S.EXECUTING:
            node.time_submitted = self.now
        if to in TERMINAL:
            self.ended.append(node)
            node.waiting = None  # its timers are cancelled with it
            if node.time_completed is None:
                node.time_completed = self.now
        if frm in (S.FAILURE, S.STOPPED) and to not in TERMINAL:
            node.time_completed = None  # retried or resumed
        if error is not None:
            node.error = error
        self.touch(node)
        self.events.append(
            history_event(
                node_id=node.id,
                node_name=node.name,
                from_status=frm,
                to_status=to,
                attempt=node.attempts,
                reason=reason,
                detail=detail or ({"error": error} if error else None),
            )
        )
        self.changes.append((node, frm, to))

    def set_workflow_status(
        self, to: str, *, reason: str, detail: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        wf = self.workflow
        frm = wf.status
        if to == frm:
            return
        if to not in WORKFLOW_TRANSITIONS[frm]:
            raise TaskInvalidState(f"workflow {wf.id}: {frm} -> {to} is not allowed ({reason})")
        wf.status = to
        fields = {"status"}
        if to == S.EXECUTING and wf.time_submitted is None:
            wf.time_submitted = self.now
            fields.add("time_submitted")
        if to in TERMINAL:
            wf.time_completed = self.now
            fields.add("time_completed")
        elif frm in (S.FAILURE, S.STOPPED):  # retried or resumed
            wf.time_completed = None
            wf.error = ""
            fields |= {"time_completed", "error"}
        if error is not None:
            wf.error = error
            fields.add("error")
        self.touch_workflow(*fields)
        self.events.append(
            history_event(
                node_id=None,
                node_name="",
                from_status=frm,
                to_status=to,
                attempt=0,
                reason=reason,
                detail=detail or ({"error": error} if error else None),
            )
        )
        self.changes.append((None, frm, to))

    def touch(self, node: Node) -> None:
        """Mark a node as changed (for fields other than status, e.g. ``config`` or ``lease``)."""
        node.updated_at = self.now
        self._dirty.add(node.id)

    def mark(self, node: Node) -> None:
        """Mark a node as changed without moving its lease clock (``updated_at``): a change that
        is not the node's progress (an owed send recorded, a backoff dropped, a timer mirrored)."""
        self._dirty.add(node.id)

    def touch_workflow(self, *fields: str) -> None:
        self._workflow_fields.update(fields)

    def add_node(self, node: Node) -> None:
        """Add an engine-created node (a monitor) to the workflow."""
        self.nodes[node.id] = node
        self._added.append(node)
        self._children = None

    def record(self, *, reason: str, detail: dict[str, Any], node: Node | None = None) -> None:
        """A history event that is not a status change (e.g. runtime parameters changed)."""
        status = node.status if node else self.workflow.status
        self.events.append(
            history_event(
                node_id=node.id if node else None,
                node_name=node.name if node else "",
                from_status=status,
                to_status=status,
                attempt=node.attempts if node else 0,
                reason=reason,
                detail=detail,
            )
        )

    # -- writing ------------------------------------------------------------------------------------
    def flush(self, *, write: bool = True) -> None:
        """Write the transition: one statement per table touched. Call inside the transaction.

        On PostgreSQL the statements go out in one pipeline (one network round trip instead of
        one per statement); they still run in order inside the same transaction. ``write=False``
        settles what will be written (the workflow's ``update_count``, ...) and leaves the
        writing to :func:`flush_many`, which writes the transitions of a batch together.
        """
        if write:
            flush_many([self])
        else:
            self._settle()

    def _settle(self) -> bool:
        """Settle the fields the flush writes (once); False when there is nothing to write."""
        if self._settled is not None:
            return self._settled
        wf = self.workflow
        if self.timers and not wf.has_timers:
            wf.has_timers = True
            self._workflow_fields.add("has_timers")
        self._settled = not (self.is_new and self.delete_after)
        if not self._settled:
            return False
        # update_count counts the writes of the workflow's own fields (status, parameters, ...);
        # a step that changes nodes only (a claim) writes the row's nodes without counting.
        if self.is_new or self._workflow_fields:
            wf.update_count += 1
            wf.updated_at = self.now
            if not self.is_new:
                self._workflow_fields |= {"update_count", "updated_at"}
        if None in self.cancel_timers_for:
            self.timers = []  # the workflow's waits end here, including any created just now
        self._pages_settle()
        return True

    def _pages_settle(self) -> None:
        """Give new nodes their page, and set the workflow's nodes (the first page), page count
        and recovery marks to write; ``self.pages`` are the further pages to write."""
        wf = self.workflow
        self.pages: dict[int, list[Node]] = {}
        if not (self.is_new or self._dirty or self._added):
            return
        by_page: dict[int, list[Node]] = defaultdict(list)
        unplaced: list[Node] = []
        for n in self.nodes.values():  # in load (= storage) order, then added ones
            if n.page is None:
                unplaced.append(n)
            else:
                by_page[n.page].append(n)
        touched: set[int] = {0} if self.is_new else set()
        last = max(by_page) if by_page else 0
        for n in unplaced:
            if len(by_page[last]) >= PAGE_SIZE:
                last += 1
            n.page = last
            by_page[last].append(n)
            touched.add(last)
        for node_id in self._dirty:
            n = self.nodes.get(node_id)
            if n is not None and n.page is not None:
                touched.add(n.page)
        if 0 in touched:
            wf.nodes = [node_encode(n) for n in by_page.get(0, ())]
            self._workflow_fields.add("nodes")
        wf.node_pages = max(by_page) if by_page else 0
        for number in touched - {0}:
            self.pages[number] = by_page[number]
        wf.leased_since, wf.resend_at, wf.stop_hooks_since = recovery_marks(self.nodes.values())
        # The same columns whenever nodes changed (and the first page when it did), so the
        # workflows of a batch share one statement.
        self._workflow_fields |= {"node_pages", *MARK_FIELDS}


def _timers_cancel(states: list[WorkflowState]) -> None:
    """Cancel the PENDING timers of the ended nodes (of the whole workflow: ``None``) of
    ``states``, with one statement for all of them.

    Every finished workflow that ever waited on time pays this (a trigger workflow's completion
    does, and a batch of them completes together), so on PostgreSQL it is one statement per batch,
    compiled once per process, as :func:`update_rows` is, instead of one ORM update per workflow.
    """
    from ..models import TimerStatus

    if not states:
        return
    cancelled_from = sole_source(TIMER_TRANSITIONS, TimerStatus.CANCELLED)
    conn = connections[router.db_for_write(Timer)]
    if conn.vendor != "postgresql":
        for state in states:
            qs = Timer.objects.filter(workflow_id=state.workflow.id)
            if None not in state.cancel_timers_for:
                qs = qs.filter(node_id__in=list(state.cancel_timers_for))
            transition(qs, TimerStatus.CANCELLED)
        return
    workflows = [state.workflow.id for state in states]
    whole = [state.workflow.id for state in states if None in state.cancel_timers_for]
    node_ids = [i for state in states if None not in state.cancel_timers_for for i in state.cancel_timers_for]
    # Node ids are unique across workflows: a node's timers are found by its id alone, and
    # the workflow ids keep the statement on the timers' workflow index.
    sql = _compiled(
        (conn.alias, "timers_cancel"),
        lambda: (
            f"UPDATE {conn.ops.quote_name(Timer._meta.db_table)} SET status = %s"
            " WHERE workflow_id = ANY(%s) AND status = %s AND (workflow_id = ANY(%s) OR node_id = ANY(%s))"
        ),
    )
    params = [TimerStatus.CANCELLED.value, workflows, cancelled_from, whole, node_ids]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)


def flush_many(states: Iterable[WorkflowState]) -> None:
    """Write the transitions of ``states``, each of another workflow locked by this transaction,
    with one statement per table (and per set of workflow fields) for all of them, in one
    pipeline: a batch of K workflows writes its nodes in one ``executemany``, not K."""
    todo = [state for state in states if state._settle()]
    if todo:
        with _pipeline():
            _write_many(todo)


def _write_many(states: list[WorkflowState]) -> None:
    updates: dict[tuple[str, ...], list[Workflow]] = {}
    pages: list[tuple[Any, int, list[Any]]] = []
    written: list[WorkflowState] = []
    for state in states:
        wf = state.workflow
        if state.is_new:
            insert_rows(Workflow, [wf])
        elif state.delete_after:
            wf.delete()
            continue
        elif state._workflow_fields:
            updates.setdefault(tuple(sorted(state._workflow_fields)), []).append(wf)
        pages.extend(
            (wf.id, number, [node_encode(n) for n in nodes]) for number, nodes in state.pages.items()
        )
        written.append(state)
    for fields, workflows in updates.items():
        update_rows(Workflow, list(fields), workflows)
    if pages:
        _pages_write(pages)
    _timers_cancel([state for state in written if state.cancel_timers_for and state.workflow.has_timers])
    timers: list[Timer] = [timer for state in written for timer in state.timers]
    if timers:
        Timer.objects.bulk_create(timers)
    # One history row per transition, however many events it holds.
    records = [
        HistoryRecord(workflow_id=state.workflow.id, created_at=state.now, events=state.events)
        for state in written
        if state.events
    ]
    if len(records) > 1:
        # A batch's history rows in one statement (one per row before).
        insert_arrays(
            HistoryRecord,
            [{"workflow_id": r.workflow_id, "created_at": r.created_at, "events": r.events} for r in records],
        )
    elif records:
        insert_rows(HistoryRecord, records)


def _pages_write(pages: list[tuple[Any, int, list[Any]]]) -> None:
    """Write further pages of nodes, ``(workflow id, number, nodes)``: new ones inserted, others
    replaced, in one statement."""
    conn = connections[router.db_for_write(NodePage)]
    if conn.vendor != "postgresql":
        for workflow_id, number, nodes in pages:
            NodePage.objects.update_or_create(
                workflow_id=workflow_id, number=number, defaults={"nodes": nodes}
            )
        return
    sql = _compiled(
        (conn.alias, "pages_write"),
        lambda: (
            f"INSERT INTO {conn.ops.quote_name(NodePage._meta.db_table)} (workflow_id, number, nodes)"
            " VALUES (%s, %s, %s) ON CONFLICT (workflow_id, number) DO UPDATE SET nodes = EXCLUDED.nodes"
        ),
    )
    field = NodePage._meta.get_field("nodes")
    params = [[w, number, conn.ops.adapt_json_value(nodes, field.encoder)] for w, number, nodes in pages]
    with conn.cursor() as cursor:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)
