"""The outbox: Kafka messages written with the state change that decided them, sent after commit.

Three ways a message gets here, all ending as an :class:`~dagger_django.models.OutboxMessage` row:

* **From a task's hook** (``execute``, ``on_message``, ...): ``Topic.send`` inside the hook only
  *collects* the message (the engine sets a context around the hook, :func:`collecting`); user
  code runs outside any transaction and never writes here. The engine writes the collected
  messages in the transaction that applies the hook's result (:func:`stage`), so a command is
  never sent for a task whose completion rolled back. A hook that raised sends nothing.
* **Workflow updates** (``DAGGER['TASK_UPDATE_TOPIC']``): :func:`after_flush` writes a snapshot of
  the workflow in every transition's transaction, keyed by the business key.
* **Anywhere else** (a view, a shell, a ``stop`` hook): :func:`outbox_send` writes the row in its
  own transaction, or in the caller's if one is open, and it is sent when that commits.

After commit the configured relay (``DAGGER['OUTBOX_RELAY']``, a :class:`Relay`) produces the
rows and marks them sent; the bridges' sweep sends whatever a crash left behind, so a committed
message is never lost. Delivery is at least once: every message carries its ``message_id`` in
the ``dagger-message-id`` header for receivers to deduplicate (dagger's own inbox does).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q

from ..conf import dagger_settings
from ..models import Node, OutboxKind, OutboxMessage, OutboxStatus
from ..models.status import transition
from . import ports
from .retry import RetryPolicy
from .state import WorkflowState

logger = logging.getLogger("dagger_django.outbox")

#: The header carrying an outgoing message's id.
MESSAGE_ID_HEADER = "dagger-message-id"


# ==================================================================================================
# encoding (JSON for everything that is not already bytes or text)
# ==================================================================================================
def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    for method in ("to_representation", "asdict", "model_dump"):  # Faust records, pydantic models
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")


def encode_value(value: Any) -> bytes | None:
    """bytes as they are, text as UTF-8, None as a tombstone, anything else as JSON."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, default=_default, allow_nan=False, separators=(",", ":")).encode("utf-8")


def encode_key(key: Any) -> bytes | None:
    """A message key: bytes and text as for values, numbers and UUIDs as their text."""
    if isinstance(key, bool):
        return b"true" if key else b"false"
    if isinstance(key, int | float | uuid.UUID | decimal.Decimal):
        return str(key).encode("utf-8")
    return encode_value(key)


def encode_headers(headers: Any) -> list[list[Any]]:
    """``{name: value}`` or ``[(name, value), ...]`` as JSON-storable ``[[name, text], ...]``."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[list[Any]] = []
    for name, value in items:
        if value is None or isinstance(value, str):
            out.append([str(name), value])
            continue
        data = value if isinstance(value, bytes) else encode_key(value) or b""
        try:
            out.append([str(name), data.decode("utf-8")])
        except UnicodeDecodeError:
            out.append([str(name), {"b64": base64.b64encode(data).decode("ascii")}])
    return out


def with_context(headers: list[list[Any]]) -> list[list[Any]]:
    """``headers`` (stored shape) with those the registered sources add now
    (``ports.outgoing_headers``: the trace context), unless the sender set them itself."""
    extra = ports.outgoing_headers()
    if not extra:
        return headers
    given = {name for name, _ in headers}
    return headers + [[name, value] for name, value in extra.items() if name not in given]


def decode_headers(headers: list[list[Any]]) -> list[tuple[str, bytes | None]]:
    """The stored headers back as Kafka headers (name, bytes)."""
    out: list[tuple[str, bytes | None]] = []
    for name, value in headers or []:
        if isinstance(value, Mapping):
            out.append((name, base64.b64decode(value["b64"])))
        else:
            out.append((name, None if value is None else str(value).encode("utf-8")))
    return out


# ==================================================================================================
# sending
# ==================================================================================================
@dataclass
class Sent:
    """What ``Topic.send`` returns: the message as it will go out (``message_id`` is its header)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[list[Any]]
    message_id: uuid.UUID
    #: False when ``send`` was given no key: the workflow's business key is used.
    key_given: bool = True


_collector: ContextVar[list[Sent] | None] = ContextVar("dagger_outbox_collector", default=None)


@contextmanager
def collecting() -> Iterator[list[Sent]]:
    """Collect the sends made while the block runs (the engine wraps user hooks in this)."""
    sends: list[Sent] = []
    token = _collector.set(sends)
    try:
        yield sends
    finally:
        _collector.reset(token)


def _message(topic: str, key: Any, value: Any, headers: Any) -> Sent:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"a topic name must be a non-empty string, not {topic!r}")
    encoded = encode_value(value)
    limit = int(dagger_settings.MAX_MESSAGE_BYTES)
    if encoded is not None and len(encoded) > limit:
        raise ValueError(
            f"a message of {len(encoded)} bytes to {topic!r} exceeds DAGGER['MAX_MESSAGE_BYTES'] ({limit})"
        )
    return Sent(
        topic=topic,
        key=encode_key(key),
        value=encoded,
        headers=with_context(encode_headers(headers)),
        message_id=uuid.uuid4(),
        key_given=key is not None,
    )


def outbox_send(*, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> Sent:
    """Send a message to ``topic`` through the outbox (what ``Topic.send`` calls).

    Inside a hook run by the engine the message is collected and written when the hook's result
    is applied; a message without a key then gets the workflow's business key. Elsewhere it is
    written at once - in the caller's transaction if one is open - and sent after commit.
    Encoding errors (a value that is not JSON, a message over ``MAX_MESSAGE_BYTES``) raise here.
    """
    message = _message(topic, key, value, headers)
    sink = _collector.get()
    if sink is not None:
        sink.append(message)
        return message
    with transaction.atomic():
        row = _row(message, kind=OutboxKind.SEND, workflow_id=None, node_id=None, key=message.key)
        row.save(force_insert=True)
        transaction.on_commit(partial(relay_after_commit, [row.pk]))
    return message


def _row(message: Sent, *, kind: str, workflow_id: Any, node_id: Any, key: bytes | None) -> OutboxMessage:
    return OutboxMessage(
        message_id=message.message_id,
        kind=kind,
        topic=message.topic,
        key=key,
        value=message.value,
        headers=message.headers,
        workflow_id=workflow_id,
        node_id=node_id,
        created_at=ports.now(),
    )


def stage(state: WorkflowState, node: Node | None, sends: list[Sent]) -> None:
    """Write the messages a hook sent, in the transaction applying its result (lock held)."""
    if not sends:
        return
    business_key = state.workflow.business_key
    default_key = None if business_key is None else business_key.encode("utf-8")
    rows = [
        _row(
            sent,
            kind=OutboxKind.COMMAND,
            workflow_id=state.workflow.id,
            node_id=node.id if node is not None else None,
            key=sent.key if sent.key_given else default_key,
        )
        for sent in sends
    ]
    OutboxMessage.objects.bulk_create(rows)
    transaction.on_commit(partial(relay_after_commit, [row.pk for row in rows]))


def after_flush(state: WorkflowState) -> None:
    """Publish the workflow's new state to ``TASK_UPDATE_TOPIC`` when one is configured."""
    topic = dagger_settings.TASK_UPDATE_TOPIC
    if not topic:
        return
    wf = state.workflow
    row = OutboxMessage(
        kind=OutboxKind.UPDATE,
        topic=topic,
        key=None if wf.business_key is None else wf.business_key.encode("utf-8"),
        value=encode_value(workflow_snapshot(state)),
        headers=with_context([]),
        workflow_id=wf.id,
        created_at=state.now,
    )
    row.save(force_insert=True)
    transaction.on_commit(partial(relay_after_commit, [row.pk]))


def _epoch(value: dt.datetime | None) -> int:
    return int(value.timestamp()) if value is not None else 0


def _status(code: str) -> dict[str, str]:
    return {"code": code, "value": code}


def workflow_snapshot(state: WorkflowState) -> dict[str, Any]:
    """The workflow as the original's update events showed it: every field and every node."""
    wf = state.workflow
    return {
        "id": str(wf.id),
        "template_name": wf.template_name,
        "task_type": "ROOT",
        "status": _status(wf.status),
        "runtime_parameters": wf.runtime_parameters,
        "partition_key_lookup": wf.partition_key_lookup,
        "business_key": wf.business_key,
        "update_count": wf.update_count,
        "time_created": _epoch(wf.time_created),
        "time_submitted": _epoch(wf.time_submitted),
        "time_completed": _epoch(wf.time_completed),
        "lastupdated": _epoch(wf.updated_at),
        "root_dag": str(wf.root_node_id) if wf.root_node_id else None,
        "error": wf.error,
        "deleted": bool(state.delete_after),
        "tasks": {
            str(n.id): {
                "id": str(n.id),
                "task_name": n.name,
                "task_type": n.node_type,
                "kind": n.kind,
                "status": _status(n.status),
                "parent_id": str(n.parent_id) if n.parent_id else None,
                "next_dags": [str(i) for i in n.next_ids],
                "root_dag": str(n.child_ids[0]) if n.child_ids else None,
                "attempts": n.attempts,
                "time_submitted": _epoch(n.time_submitted),
                "time_completed": _epoch(n.time_completed),
            }
            for n in sorted(state.nodes.values(), key=lambda n: n.position)
        },
    }


# ==================================================================================================
# relaying
# ==================================================================================================
class Relay(Protocol):
    """Sends outbox rows to Kafka. ``relay(ids=...)`` after a commit; ``relay(older_than=...)`` in
    sweeps. Returns how many rows were sent. Must never raise for a broker problem, and after a
    commit must return quickly even when the broker is down (the background relay retries)."""

    def relay(self, *, ids: list[int] | None = None, older_than: dt.datetime | None = None) -> int: ...


#: ``publish(rows) -> {row id: None when sent, else the error text}``. A row missing from the
#: answer was not acknowledged; it is released without counting an attempt.
Publish = Callable[[list[OutboxMessage]], dict[int, str | None]]


class BrokerUnavailable(Exception):
    """Raised by a ``Publish`` when the broker could not be reached: nothing of the batch was sent
    and no row counts an attempt (an outage must not kill messages); they are retried later."""


_relay: Relay | None = None
_relay_loaded = False


def get_relay() -> Relay | None:
    global _relay, _relay_loaded
    if not _relay_loaded:
        from django.utils.module_loading import import_string

        path = dagger_settings.OUTBOX_RELAY
        _relay = import_string(path)() if path else None
        _relay_loaded = True
    return _relay


def set_relay(relay: Relay | None) -> Relay | None:
    """Install ``relay`` (tests); return the previous one. ``reset_relay()`` re-reads settings."""
    global _relay, _relay_loaded
    previous, _relay, _relay_loaded = _relay, relay, True
    return previous


def reset_relay() -> None:
    global _relay, _relay_loaded
    _relay, _relay_loaded = None, False


def relay_after_commit(ids: list[int]) -> None:
    """on_commit: try to send these rows now. A failure only delays them until the background
    relay (a bridge's sweep or ``manage.py dagger_outbox relay``); it never reaches the caller."""
    try:
        relay = get_relay()
        if relay is not None:
            relay.relay(ids=ids)
    except Exception:
        logger.exception("outbox relay failed for %s rows; the background relay will send them", len(ids))


def relay_pending(*, grace_seconds: float = 10.0) -> int:
    """The background relay's pass: send pending rows older than ``grace_seconds`` (younger ones
    are the after-commit relay's). Run by the bridges' sweep and ``manage.py dagger_outbox relay``.
    Returns how many rows were sent; 0 without a relay."""
    relay = get_relay()
    if relay is None:
        return 0
    return relay.relay(older_than=ports.now() - dt.timedelta(seconds=max(0.0, grace_seconds)))


def outbox_prune(*, limit: int = 5000) -> int:
    """Delete sent rows older than ``OUTBOX_RETENTION_DAYS`` (by ``sent_at``; 0 keeps them all),
    at most ``limit`` per call. Pending and dead rows are never deleted: they are still owed, or
    wait for an operator (``dagger_outbox requeue``). Run by the bridges' message sweep."""
    days = float(dagger_settings.OUTBOX_RETENTION_DAYS)
    if days <= 0:
        return 0
    cutoff = ports.now() - dt.timedelta(days=days)
    ids = list(
        OutboxMessage.objects.filter(status=OutboxStatus.SENT, sent_at__lt=cutoff)
        .order_by("sent_at")
        .values_list("id", flat=True)[:limit]
    )
    if not ids:
        return 0
    # Guarded again: a sent row never changes status, but the guard costs nothing.
    deleted, _ = OutboxMessage.objects.filter(pk__in=ids, status=OutboxStatus.SENT).delete()
    return deleted


# A single advisory lock key: claims take turns (each is one short statement), so two relays
# never split the unsent rows of one key between them and send them out of order.
_CLAIM_LOCK = 0x6461_6767_6F62  # "daggob"


def retry_delay(attempts: int) -> dt.timedelta:
    """Back-off before the next try of a row that failed ``attempts`` times (doubling, capped)."""
    base = max(0.0, float(dagger_settings.OUTBOX_RETRY_DELAY))
    cap = max(base, float(dagger_settings.OUTBOX_RETRY_MAX_DELAY))
    return dt.timedelta(seconds=RetryPolicy(max_retries=None, backoff=base, backoff_max=cap).delay(attempts))


def _claimable(now: dt.datetime, ids: list[int] | None, older_than: dt.datetime | None) -> Q:
    q = Q(status=OutboxStatus.PENDING)
    q &= Q(available_at__isnull=True) | Q(available_at__lte=now)
    q &= Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    if ids is not None:
        q &= Q(pk__in=ids)
    if older_than is not None:
        q &= Q(created_at__lte=older_than)
    return q


def outbox_claim(
    *,
    ids: list[int] | None = None,
    older_than: dt.datetime | None = None,
    limit: int | None = None,
    lease: float | None = None,
) -> list[OutboxMessage]:
    """Claim pending rows for ``lease`` seconds (default ``OUTBOX_LEASE_SECONDS``) in one short
    transaction and return them.

    A row is claimed only when every older unsent row of its ``(topic, key)`` is claimed with it:
    one still backing off, claimed by another relay, or DEAD holds the newer ones back, so a
    retried row is never overtaken by a newer row of its key. Rows without a key have no order
    (Kafka spreads them over partitions anyway). ``SKIP LOCKED`` passes over rows another
    transaction is recording.
    """
    limit = int(limit or dagger_settings.OUTBOX_BATCH)
    now = ports.now()
    claimable = _claimable(now, ids, older_than)
    holding = (
        OutboxMessage.objects.filter(
            topic=OuterRef("topic"),
            key=OuterRef("key"),
            id__lt=OuterRef("id"),
            status__in=[OutboxStatus.PENDING, OutboxStatus.DEAD],
        )
        .exclude(claimable)
        .values("id")[:1]
    )
    with transaction.atomic():
        if connection.vendor == "postgresql":  # SQLite has one writer at a time anyway
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CLAIM_LOCK])
        rows = list(
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(claimable)
            .filter(~Exists(holding))
            .order_by("id")[:limit]
        )
        if rows:
            until = now + dt.timedelta(seconds=_lease_seconds(lease))
            OutboxMessage.objects.filter(pk__in=[r.pk for r in rows]).update(claimed_until=until)
    return rows


def _lease_seconds(lease: float | None) -> float:
    return float(dagger_settings.OUTBOX_LEASE_SECONDS if lease is None else lease)


def _rounds(rows: list[OutboxMessage]) -> list[list[OutboxMessage]]:
    """Split a claimed batch so that each round holds at most one row per key, oldest first."""
    by_key: dict[tuple[str, bytes], list[OutboxMessage]] = {}
    rounds: list[list[OutboxMessage]] = [[]]
    for row in rows:
        if row.key is None:
            rounds[0].append(row)
            continue
        queue = by_key.setdefault((row.topic, bytes(row.key)), [])
        queue.append(row)
        while len(rounds) < len(queue):
            rounds.append([])
        rounds[len(queue) - 1].append(row)
    return [r for r in rounds if r]


@dataclass
class _Outcome:
    sent: list[int] = dataclasses.field(default_factory=list)
    #: counted failures: row id -> error
    failed: dict[int, str] = dataclasses.field(default_factory=dict)
    #: released without an attempt (outage, not acknowledged, or an older row of its key failed)
    released: dict[int, str] = dataclasses.field(default_factory=dict)
    outage: str | None = None


def _publish_in_order(
    publish: Publish, rows: list[OutboxMessage], budget: float | None, lease: float | None = None
) -> _Outcome:
    """Publish in rounds (one row per key per round): a row goes out only once the older row of
    its key was acknowledged. No transaction is open here: the broker may take its time, within
    the claim's lease and ``budget`` seconds (rounds not started by then are left for later)."""
    outcome = _Outcome()
    blocked: set[tuple[str, bytes]] = set()
    allowed = 0.8 * _lease_seconds(lease)
    deadline = time.monotonic() + (allowed if budget is None else min(allowed, budget))
    for batch in _rounds(rows):
        ready: list[OutboxMessage] = []
        for row in batch:
            group = (row.topic, bytes(row.key)) if row.key is not None else None
            if outcome.outage is not None or (group is not None and group in blocked):
                outcome.released[row.pk] = outcome.outage or "an older message of its key is not sent yet"
            elif time.monotonic() > deadline:
                outcome.released[row.pk] = "left for the next pass (out of time for this one)"
            else:
                ready.append(row)
        if not ready:
            continue
        try:
            results = publish(ready)
        except BrokerUnavailable as exc:
            outcome.outage = str(exc) or "the broker is unavailable"
            for row in ready:
                outcome.released[row.pk] = outcome.outage
            continue
        for row in ready:
            error = results.get(row.pk, "not acknowledged")
            if row.pk in results and error is None:
                outcome.sent.append(row.pk)
                continue
            if row.key is not None:
                blocked.add((row.topic, bytes(row.key)))
            if row.pk in results:
                outcome.failed[row.pk] = str(error)
            else:
                outcome.released[row.pk] = str(error)
    return outcome


def _record(rows: list[OutboxMessage], outcome: _Outcome) -> None:
    """Write what happened to a claimed batch, in one short transaction."""
    now = ports.now()
    by_id = {row.pk: row for row in rows}
    cap = max(1, int(dagger_settings.OUTBOX_MAX_ATTEMPTS))
    mine = OutboxMessage.objects.filter(status=OutboxStatus.PENDING)
    with transaction.atomic():
        if outcome.sent:
            transition(
                mine.filter(pk__in=outcome.sent),
                OutboxStatus.SENT,
                sent_at=now,
                claimed_until=None,
                attempts=F("attempts") + 1,
            )
        for pk, error in outcome.failed.items():
            attempts = by_id[pk].attempts + 1
            if attempts >= cap:
                transition(
                    mine.filter(pk=pk),
                    OutboxStatus.DEAD,
                    attempts=attempts,
                    claimed_until=None,
                    last_error=error[:2000],
                )
                logger.error(
                    "outbox: message %s to %s is DEAD after %s attempts: %s (requeue it in the admin)",
                    by_id[pk].message_id,
                    by_id[pk].topic,
                    attempts,
                    error,
                )
            else:
                mine.filter(pk=pk).update(
                    attempts=attempts,
                    claimed_until=None,
                    available_at=now + retry_delay(attempts),
                    last_error=error[:2000],
                )
        if outcome.released:
            # no attempt counted; an outage waits one back-off step before the next try
            later = now + retry_delay(1) if outcome.outage else None
            released = mine.filter(pk__in=list(outcome.released))
            if outcome.outage:
                released.update(claimed_until=None, available_at=later, last_error=outcome.outage[:2000])
            else:
                released.update(claimed_until=None)
    if outcome.failed or outcome.outage:
        logger.warning(
            "outbox: %s of %s messages not sent yet%s",
            len(rows) - len(outcome.sent),
            len(rows),
            f" ({outcome.outage})" if outcome.outage else "",
        )


def outbox_relay(
    *,
    publish: Publish,
    ids: list[int] | None = None,
    older_than: dt.datetime | None = None,
    limit: int | None = None,
    budget: float | None = None,
    lease: float | None = None,
) -> int:
    """One relay pass: claim (short transaction), publish (no transaction, no lock), record
    (short transaction). Returns the number of rows sent.

    A failure counts an attempt and backs the row off (``OUTBOX_RETRY_DELAY`` doubling); after
    ``OUTBOX_MAX_ATTEMPTS`` the row is DEAD with its last error, and the newer rows of its key
    wait until it is requeued (admin action, ``manage.py dagger_outbox requeue``). A
    :class:`BrokerUnavailable` counts nothing. A crash after publishing leaves the rows claimed;
    they are sent again when the lease ends, with the same ``dagger-message-id``. ``budget``
    bounds the seconds spent starting rounds of produces (the after-commit relay's bound);
    ``lease`` is how long the rows stay claimed (default ``OUTBOX_LEASE_SECONDS``): a relay that
    gives up within seconds claims for seconds, so that rows whose outcome it could not record
    (a database outage right then) are not held back for the background relay's whole lease.
    """
    rows = outbox_claim(ids=ids, older_than=older_than, limit=limit, lease=lease)
    if not rows:
        return 0
    try:
        outcome = _publish_in_order(publish, rows, budget, lease)
    except BaseException:
        # a bug in the publisher: release the claims so the rows do not wait for the lease
        _record(rows, _Outcome(released={row.pk: "" for row in rows}))
        raise
    _record(rows, outcome)
    return len(outcome.sent)


def outbox_requeue(*, ids: list[int] | None = None) -> int:
    """Put DEAD rows (these, or all) back to PENDING with their attempts reset; returns how many.

    Their last error stays visible until the next try. The rows behind them (same key) follow.
    """
    qs = OutboxMessage.objects.filter(status=OutboxStatus.DEAD)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    return transition(qs, OutboxStatus.PENDING, attempts=0, available_at=None, claimed_until=None)


def outbox_held_by(row: OutboxMessage) -> int | None:
    """The id of the oldest unsent (pending or DEAD) older row of ``row``'s key, which holds
    ``row`` back; None when nothing does (the admin shows it as the reason a row waits)."""
    if row.key is None or row.status != OutboxStatus.PENDING:
        return None
    return (
        OutboxMessage.objects.filter(
            topic=row.topic,
            key=row.key,
            id__lt=row.pk,
            status__in=[OutboxStatus.PENDING, OutboxStatus.DEAD],
        )
        .order_by("id")
        .values_list("id", flat=True)
        .first()
    )


@dataclass
class OutboxCounts:
    pending: int
    dead: int
    #: When the oldest row still waiting was written (None: nothing waits).
    oldest_pending: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "dead": self.dead,
            "oldest_pending": self.oldest_pending.isoformat() if self.oldest_pending else None,
        }


def outbox_counts() -> OutboxCounts:
    """What an operator watches: rows waiting, rows dead, and how old the oldest waiting row is."""
    from django.db.models import Count, Min

    pending = OutboxMessage.objects.filter(status=OutboxStatus.PENDING).aggregate(
        n=Count("id"), oldest=Min("created_at")
    )
    dead = OutboxMessage.objects.filter(status=OutboxStatus.DEAD).count()
    return OutboxCounts(pending=pending["n"], dead=dead, oldest_pending=pending["oldest"])


__all__ = [
    "MESSAGE_ID_HEADER",
    "BrokerUnavailable",
    "OutboxCounts",
    "Publish",
    "Relay",
    "Sent",
    "after_flush",
    "collecting",
    "decode_headers",
    "encode_headers",
    "encode_key",
    "encode_value",
    "get_relay",
    "outbox_claim",
    "outbox_counts",
    "outbox_held_by",
    "outbox_prune",
    "outbox_relay",
    "outbox_requeue",
    "outbox_send",
    "relay_after_commit",
    "relay_pending",
    "retry_delay",
    "reset_relay",
    "set_relay",
    "stage",
    "workflow_snapshot",
]
