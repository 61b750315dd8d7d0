"""Incoming messages: routing them to listener nodes, and handing each one to its listener.

Two steps, so that no user code ever runs while a workflow row is locked and the router never
locks a workflow at all:

1. **Route** (:func:`messages_route`, the bridge and ``POST /api/dagger/events/``). For a batch
   of messages: decode, extract the correlation keys with the listener classes of the topic,
   look the keys up in the subscription index (one query for the batch), and in **one**
   transaction record every message in the inbox (whose unique keys make a redelivered message
   a duplicate with no second effect) together with one :class:`~dagger_django.models.Delivery`
   per matching listener node. After commit each node with a new delivery is handed to a worker
   (``Dispatcher.run_node``). No workflow is locked here, so routing costs a few statements per
   batch and cannot deadlock with anything.
2. **Deliver** (on a worker, through ``services.node_run``, like an executor's claim/execute/
   apply). *Claim*, with the workflow locked: decide what the listener's state allows - deliver,
   jump to it (``allow_skip_to``), keep the message until it starts (buffer), or ignore it - and
   mark the delivery as taken. *Execute* ``on_message`` with no lock held. *Apply*, locked again:
   merge the runtime parameters it changed (which re-keys subscriptions), complete the listener
   when it returned True and walk on, and record the outcome. One node's deliveries are handled
   one at a time, in arrival order.

See ``docs/correlation.md`` for the rules and their differences from the original.
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber

from ..conf import dagger_settings
from ..definitions import payloads
from ..definitions.tasks import resolve_hook_result
from ..definitions.views import build_task
from ..exceptions import (
    DaggerError,
    InvalidPayload,
    MessageTooLarge,
    TaskClassNotFound,
    UnknownTopic,
    WorkflowDoesNotExist,
)
from ..models import (
    Delivery,
    DeliveryStatus,
    InboxMessage,
    InboxStatus,
    Node,
    NodeKind,
    Status,
    Subscription,
)
from ..models.status import (
    DELIVERY_TRANSITIONS,
    ENDED_FOR_GOOD,
    OPEN_DELIVERY,
    TERMINAL,
    allowed_from,
    transition,
)
from . import correlation, logs, outbox, parameters, ports, recovery, timing, txn, walker
from .retry import RetryPolicy, resend_after
from .state import WorkflowState, field_preparers, insert_arrays, nodes_read_many

if TYPE_CHECKING:
    from .txn import Outcome, Work

logger = logging.getLogger("dagger_django.messages")
S = Status
D = DeliveryStatus

#: Status of a message that had been received before (``messages_route`` results only).
DUPLICATE = "duplicate"


# ==================================================================================================
# decoding
# ==================================================================================================
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(raw: bytes | None) -> tuple[Any, str, str]:
    """``(payload, reason, detail)`` for message bytes; ``reason`` is empty when they decoded.

    Reasons: ``empty``, ``too_large``, ``not_json``, and those of :func:`_unstorable`.
    """
    if raw is None:
        return None, "empty", "the message has no value (a tombstone)"
    limit = int(dagger_settings.MAX_MESSAGE_BYTES)
    if len(raw) > limit:
        return None, "too_large", f"{len(raw)} bytes; DAGGER['MAX_MESSAGE_BYTES'] is {limit}"
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: nested deeper than Python's parser goes (about 1,000 levels).
        reason = "too_deep" if isinstance(exc, RecursionError) else "not_json"
        return None, reason, clean_text(f"{type(exc).__name__}: {exc}", 500)
    reason, detail = _unstorable(payload)
    if reason:
        return None, reason, detail
    return payload, "", ""


def _unstorable(payload: Any) -> tuple[str, str]:
    """``(reason, detail)`` when the database could not store ``payload`` as jsonb, else ``("", "")``.

    Reasons: ``not_json`` (no JSON form at all), ``too_deep``, ``nul_character`` and
    ``bad_unicode`` (see :func:`parameters.unstorable_text`). Nothing here recurses, so no
    payload can exhaust the stack of the bridge.
    """
    try:
        text = json.dumps(payload, allow_nan=False)
    except RecursionError:
        return "too_deep", f"the JSON nests deeper than {parameters.MAX_JSON_DEPTH} levels"
    except (TypeError, ValueError) as exc:
        return "not_json", clean_text(f"the payload is not JSON: {exc}", 500)
    return parameters.unstorable_text(payload, text)


def clean_text(value: Any, limit: int) -> str:
    """Text any text column takes: no NUL, no lone surrogate, at most ``limit`` characters."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if parameters.has_lone_surrogate(text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit]


def _text(value: Any, limit: int) -> str | None:
    """:func:`clean_text`, keeping None."""
    return None if value is None else clean_text(value, limit)


def _header_value(value: Any) -> Any:
    """A header value as stored: text when the database can hold it, else ``{"b64": ...}``."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    else:
        text = str(value)
    if "\x00" in text or parameters.has_lone_surrogate(text):
        return {"b64": base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")}
    return text[:2000]


# ==================================================================================================
# routing
# ==================================================================================================
@dataclass
class Incoming:
    """A message to route. A transport that could not decode it sets ``invalid`` (the reason)."""

    topic: str
    payload: Any = None
    source: str = "kafka"
    partition: int | None = None
    offset: int | None = None
    message_id: str | None = None
    key: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    invalid: str = ""
    detail: str = ""
    #: The key's bytes when ``key`` could not hold them exactly (not UTF-8, a NUL).
    raw_key: bytes | None = None
    #: Which incarnation of the topic the offset belongs to (see ``docs/bridge.md``).
    incarnation: str = ""
    #: The payload was decoded by :func:`decode_json`, which found it storable: routing does
    #: not check it again.
    storable: bool = False


def dead_letter(message: Incoming, reason: str, detail: str, *, last_resort: bool = False) -> Incoming:
    """``message`` as a dead letter with ``reason``; its payload goes, its bytes stay.

    ``last_resort`` keeps only fields any database takes whatever the message held: no message
    id (deduplication falls back to the offset), the key and headers as base64.
    """
    raw = message.raw
    if raw is None and message.payload is not None:
        try:
            raw = json.dumps(message.payload, allow_nan=False).encode("ascii")
        except (TypeError, ValueError, RecursionError):
            raw = None
    dead = dataclasses.replace(
        message, payload=None, raw=raw, invalid=reason, detail=clean_text(detail, 2000)
    )
    if last_resort:
        key = message.key
        dead.raw_key = message.raw_key or (
            key.encode("utf-8", "surrogatepass") if isinstance(key, str) else None
        )
        dead.key = None
        dead.message_id = None
        try:
            blob = json.dumps(message.headers, default=repr).encode("ascii")
        except Exception:  # noqa: BLE001 - the headers are unreadable: keep their repr
            blob = repr(message.headers).encode("utf-8", "backslashreplace")
        dead.headers = {"b64": base64.b64encode(blob).decode("ascii")} if message.headers else {}
        dead.topic = clean_text(message.topic, 255)
        dead.incarnation = clean_text(message.incarnation, 100)
    return dead


@dataclass
class Routed:
    """What became of a routed message. ``status``: routed, unmatched, invalid or duplicate."""

    status: str
    matched: int = 0
    inbox_id: int | None = None
    reason: str = ""
    detail: str = ""


@dataclass
class _Plan:
    message: Incoming
    status: str = InboxStatus.ROUTED
    reason: str = ""
    detail: str = ""
    pairs: list[tuple[str, str]] = field(default_factory=list)
    #: (workflow id, node id) to deliver to, in order.
    targets: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)
    duplicate_of: tuple[int, int] | None = None
    #: The key of its inbox row, once written.
    inbox_id: int | None = None


def _prepare_safely(message: Incoming, *, strict: bool) -> _Plan:
    """:func:`_prepare`, turning any unexpected exception into a dead letter of this message
    alone (``internal_error``): no content of one message can stop the others."""
    try:
        return _prepare(message, strict=strict)
    except UnknownTopic:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded with the message
        logger.exception("preparing a message of %s failed; it becomes a dead letter", message.topic)
        return _internal_error(message, exc)


def _internal_error(message: Incoming, exc: BaseException) -> _Plan:
    plan = _Plan(message)
    plan.status, plan.reason = InboxStatus.INVALID, "internal_error"
    plan.detail = clean_text(f"{type(exc).__name__}: {exc}", 2000)
    return plan


def _prepare(message: Incoming, *, strict: bool) -> _Plan:
    """Decode-level checks and key extraction (user code); no database access."""
    plan = _Plan(message)
    if message.invalid:
        plan.status, plan.reason, plan.detail = InboxStatus.INVALID, message.invalid, message.detail
        return plan
    listeners = correlation.topic_listeners(message.topic)
    if listeners is None:
        if strict:
            raise UnknownTopic(f"No registered listener template waits on topic {message.topic!r}.")
        plan.status, plan.reason = InboxStatus.UNMATCHED, "no_listener"
        plan.detail = "no registered listener template waits on this topic"
        return plan
    reason, detail = ("", "") if message.storable else _unstorable(message.payload)
    if reason:
        plan.status, plan.reason, plan.detail = InboxStatus.INVALID, reason, detail
        return plan
    # The extractor gets the value as the topic declares it (bytes, text, a record, or JSON).
    keys = correlation.extract_keys(listeners, message.payload, raw=message.raw, topic=message.topic)
    if not keys.pairs:
        plan.status, plan.reason = InboxStatus.INVALID, keys.reason
        plan.detail = "; ".join(keys.problems)[:2000] or "no correlation key in the payload"
        return plan
    plan.pairs = keys.pairs
    return plan


def _match(plans: list[_Plan]) -> None:
    """Find the listener nodes of every plan's keys: one query for the whole batch."""
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for plan in plans:
        for name, value in plan.pairs:
            wanted[(plan.message.topic, name)].add(value)
    if not wanted:
        return
    query = Q()
    for (topic, name), values in wanted.items():
        query |= Q(topic=topic, key_name=name, key_value__in=sorted(values))
    index: dict[tuple[str, str, str], list[tuple[uuid.UUID, uuid.UUID, bool]]] = defaultdict(list)
    rows = (
        Subscription.objects.filter(query)
        .order_by("id")
        .values_list("topic", "key_name", "key_value", "workflow_id", "node_id", "match_only_one")
    )
    for topic, name, value, workflow_id, node_id, only_one in rows:
        index[(topic, name, value)].append((workflow_id, node_id, only_one))
    for plan in plans:
        seen: set[uuid.UUID] = set()
        for name, value in plan.pairs:
            taken_one = False
            for workflow_id, node_id, only_one in index.get((plan.message.topic, name, value), ()):
                if only_one:
                    # match_only_one: of the listeners of that class waiting on this key, the
                    # first registered gets the message.
                    if taken_one:
                        continue
                    taken_one = True
                if node_id not in seen:
                    seen.add(node_id)
                    plan.targets.append((workflow_id, node_id))
        if not plan.targets:
            plan.status, plan.reason = InboxStatus.UNMATCHED, "no_subscription"
            plan.detail = "no waiting listener has these keys: " + ", ".join(
                f"{n}={v}" for n, v in plan.pairs
            )


def _position(m: Incoming) -> tuple[str, str, str, int, int] | None:
    """Where a message without an id sits in Kafka: its dedupe key (None: no position).

    A message with an id is deduplicated by the id alone; an offset identifies a message only
    together with the incarnation of its topic (a recreated topic reuses offsets).
    """
    if m.message_id is not None or m.offset is None or m.partition is None:
        return None
    return (m.source, m.topic, m.incarnation, m.partition, m.offset)


def _match_safely(plans: list[_Plan]) -> None:
    """:func:`_match` for the batch; if it fails for a reason other than the database, match the
    plans one by one, and the one that fails becomes a dead letter (``internal_error``)."""
    try:
        _match(plans)
        return
    except DatabaseError:
        raise  # an outage, or a value the database refused: the caller's policy
    except Exception:  # noqa: BLE001 - found below, message by message
        logger.exception("matching a batch failed; matching its messages one by one")
    for plan in plans:
        plan.targets = []
        try:
            _match([plan])
        except DatabaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded with the message
            failed = _internal_error(plan.message, exc)
            plan.status, plan.reason, plan.detail, plan.targets = (
                failed.status,
                failed.reason,
                failed.detail,
                [],
            )


def _find_duplicates(plans: list[_Plan]) -> None:
    """Mark the plans whose message is already in the inbox (or earlier in this batch)."""
    positions: dict[tuple[str, str, str, int], set[int]] = defaultdict(set)
    ids: dict[str, set[str]] = defaultdict(set)
    for plan in plans:
        m = plan.message
        where = _position(m)
        if where is not None:
            positions[where[:4]].add(where[4])
        if m.message_id is not None:
            ids[m.topic].add(m.message_id)
    if not positions and not ids:
        return
    query = Q()
    for (source, topic, incarnation, partition), offsets in positions.items():
        query |= Q(
            source=source,
            topic=topic,
            incarnation=incarnation,
            partition=partition,
            offset__in=sorted(offsets),
            message_id__isnull=True,
        )
    for topic, values in ids.items():
        query |= Q(topic=topic, message_id__in=sorted(values))
    known_positions: dict[tuple[str, str, str, int, int], tuple[int, int]] = {}
    known_ids: dict[tuple[str, str], tuple[int, int]] = {}
    rows = InboxMessage.objects.filter(query).values_list(
        "id", "source", "topic", "incarnation", "partition", "offset", "message_id", "matched"
    )
    for pk, source, topic, incarnation, partition, offset, message_id, matched in rows:
        if message_id is not None:
            known_ids[(topic, message_id)] = (pk, matched)
        elif offset is not None:
            known_positions[(source, topic, incarnation, partition, offset)] = (pk, matched)
    for plan in plans:
        m = plan.message
        where = _position(m)
        hit = None
        if where is not None:
            hit = known_positions.get(where)
        elif m.message_id is not None:
            hit = known_ids.get((m.topic, m.message_id))
        if hit is not None:
            plan.duplicate_of = hit
            continue
        # Within the batch: the first occurrence wins, later ones are duplicates of it.
        if where is not None:
            known_positions[where] = (-1, 0)
        if m.message_id is not None:
            known_ids[(m.topic, m.message_id)] = (-1, 0)


def _inbox_row(plan: _Plan, now: dt.datetime) -> dict[str, Any]:
    """The inbox row of a plan's message, as :func:`state.insert_arrays` takes it."""
    m = plan.message
    invalid = plan.status == InboxStatus.INVALID
    # Bytes are kept for dead letters (to fix and replay) and for topics whose listeners get
    # them (value_type=bytes/str); a JSON message's payload is enough to route it again.
    keep = invalid or payloads.keeps_raw(m.topic)
    raw = (
        m.raw if keep and m.raw is not None and len(m.raw) <= int(dagger_settings.MAX_MESSAGE_BYTES) else None
    )
    return {
        "source": m.source,
        "topic": m.topic,
        "incarnation": m.incarnation,
        "partition": m.partition,
        "offset": m.offset,
        "message_id": m.message_id,
        "key": _text(m.key, 10_000),
        "raw_key": m.raw_key,
        "payload": None if invalid else m.payload,
        "raw": raw,
        "headers": {clean_text(k, 200): _header_value(v) for k, v in (m.headers or {}).items()},
        "status": plan.status,
        "reason": plan.reason,
        "detail": _text(plan.detail, 4000) or "",
        "matched": len(plan.targets),
        "received_at": now,
        "updated_at": now,
    }


def _write(plans: list[_Plan]) -> None:
    """Record the messages and their deliveries in one transaction; dispatch after commit."""
    now = ports.now()
    with transaction.atomic():
        _find_duplicates(plans)
        fresh = [p for p in plans if p.duplicate_of is None]
        # One statement per table for the batch (the inbox keys returned for the deliveries).
        ids = insert_arrays(InboxMessage, [_inbox_row(p, now) for p in fresh], returning_ids=True)
        deliveries: list[dict[str, Any]] = []
        targets: dict[tuple[Any, Any], None] = {}
        for plan, inbox_id in zip(fresh, ids, strict=True):
            plan.inbox_id = inbox_id
            for workflow_id, node_id in plan.targets:
                deliveries.append(
                    {
                        "message_id": inbox_id,
                        "workflow_id": workflow_id,
                        "node_id": node_id,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                targets[(workflow_id, node_id)] = None
        if deliveries:
            # In workflow id order (stable: one listener's deliveries keep their order): the
            # deferred foreign-key checks at commit lock the workflow rows in this order, as
            # workers lock them (ORDER BY id), so the two never deadlock.
            deliveries.sort(key=lambda d: str(d["workflow_id"]))
            insert_arrays(Delivery, deliveries)
            transaction.on_commit(partial(_dispatch, list(targets)))


def _dispatch(targets: Iterable[tuple[Any, Any]]) -> None:
    """After commit: hand the listeners with new messages to workers (``DISPATCH_BATCH`` per
    Celery message). A failure here loses nothing: the deliveries are committed and the sweep
    hands them out again."""
    targets = list(targets)
    try:
        ports.dispatch_nodes(targets)
    except Exception:
        logger.exception("could not dispatch %d listener(s); the sweep will", len(targets))
        _deliveries_owed(targets)


def _deliveries_owed(targets: list[tuple[Any, Any]]) -> None:
    """Make the deliveries whose dispatch failed due now: the next sweep sends them rather than
    waiting ``DELIVERY_LEASE_SECONDS`` for them to look lost."""
    try:
        Delivery.objects.filter(
            status=D.PENDING, available_at__isnull=True, node_id__in=[n for _, n in targets]
        ).update(available_at=ports.now())
    except Exception:  # noqa: BLE001 - after commit: the lease still brings them back
        logger.exception("could not record %d owed listener dispatch(es)", len(targets))


def messages_route(messages: list[Incoming], *, strict: bool = False) -> list[Routed]:
    """Route a batch of messages (see the module docstring); one result per message, in order.

    ``strict`` (the HTTP path) raises :class:`UnknownTopic` instead of recording a message for a
    topic no listener template uses. Key extraction runs the listener classes' hooks here, in
    the caller's process and outside any transaction; any exception while one message is
    decoded, prepared or matched makes that message a dead letter, never stops the batch.
    Database errors propagate (the caller retries the batch, or routes it one message at a time:
    its effects are all or nothing, and the inbox makes a retry safe).
    """
    plans = [_prepare_safely(m, strict=strict) for m in messages]
    _match_safely([p for p in plans if p.status == InboxStatus.ROUTED])
    try:
        _write(plans)
    except IntegrityError:
        # Another router recorded one of these messages between our check and our insert
        # (two bridges during a rebalance): record them one by one; the loser is a duplicate.
        for plan in plans:
            plan.duplicate_of = plan.inbox_id = None
            try:
                _write([plan])
            except IntegrityError:
                _find_duplicates([plan])
                if plan.duplicate_of is None:
                    raise
    return [_result(p) for p in plans]


def _result(plan: _Plan) -> Routed:
    if plan.duplicate_of is not None:
        pk, matched = plan.duplicate_of
        return Routed(status=DUPLICATE, matched=matched, inbox_id=pk if pk > 0 else None)
    assert plan.inbox_id is not None
    return Routed(
        status=plan.status,
        matched=len(plan.targets),
        inbox_id=plan.inbox_id,
        reason=plan.reason,
        detail=plan.detail,
    )


def message_receive(
    *, topic: str, payload: Any, message_id: str | None = None, key: str | None = None, source: str = "http"
) -> Routed:
    """Route one message given as decoded JSON (the HTTP API), exactly as if it came from Kafka.

    ``message_id`` makes retries safe: the same id on the same topic is routed once. Raises
    :class:`UnknownTopic`, :class:`InvalidPayload` and :class:`MessageTooLarge` for requests that
    cannot be a message.
    """
    if correlation.topic_listeners(topic) is None:
        raise UnknownTopic(f"No registered listener template waits on topic {topic!r}.")
    # Refused rather than recorded as a dead letter: the client is there to fix it, and the
    # payload could not be kept anyway.
    reason, detail = _unstorable(payload)
    if reason:
        raise InvalidPayload(f"The payload cannot be stored ({reason}): {detail}.")
    size = len(json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8"))
    limit = int(dagger_settings.MAX_MESSAGE_BYTES)
    if size > limit:
        raise MessageTooLarge(
            f"The payload takes {size} bytes of JSON; DAGGER['MAX_MESSAGE_BYTES'] is {limit}."
        )
    message = Incoming(topic=topic, payload=payload, source=source, message_id=message_id, key=key)
    if payloads.keeps_raw(topic):
        # A bytes/str topic: its listeners get the payload in the form it travels on Kafka.
        message.raw = payloads.encoded_form(payload)
    return messages_route([message], strict=True)[0]


def message_replay(*, inbox_id: int, actor: str | None = None, reason: str | None = None) -> Routed:
    """Route a recorded message again (a dead letter after a fix, an expired or unmatched one).

    Invalid messages with their raw bytes are decoded again. The inbox row is reused (no
    deduplication applies to a replay) and gets the new outcome. Who replayed it (``actor``) and
    why (``reason``) are kept on the row (``replayed_by``, ``replay_reason``, ``replayed_at``:
    the last replay), and each workflow the replay delivers the message to gets a
    ``message_replayed`` event in its history with them, in the same transaction.
    """
    row = InboxMessage.objects.get(pk=inbox_id)
    payload = row.payload
    incoming = Incoming(topic=row.topic, source=row.source, key=row.key, headers=row.headers or {})
    if row.status == InboxStatus.INVALID and row.raw is not None:
        payload, reason_code, detail = decode_json(bytes(row.raw))
        incoming.invalid, incoming.detail, incoming.raw = reason_code, detail, bytes(row.raw)
    if row.raw is not None and payloads.keeps_raw(row.topic):
        incoming.raw = bytes(row.raw)
        if incoming.invalid == "not_json":  # a bytes/str topic takes any bytes
            payload, incoming.invalid, incoming.detail = None, "", ""
    incoming.payload = payload
    plan = _prepare_safely(incoming, strict=False)
    if plan.status == InboxStatus.ROUTED:
        _match_safely([plan])
    now = ports.now()
    operator = {"actor": clean_text(actor or "", 150), "reason": clean_text((reason or "").strip(), 1000)}
    with transaction.atomic():
        fields = {"reason": plan.reason, "detail": _text(plan.detail, 4000) or ""}
        if plan.status != InboxStatus.INVALID:
            fields["payload"] = payload
        replayed = transition(
            InboxMessage.objects.filter(pk=row.pk),
            plan.status,
            matched=F("matched") + len(plan.targets),
            updated_at=now,
            replayed_by=operator["actor"][:150],
            replay_reason=operator["reason"],
            replayed_at=now,
            **fields,
        )
        if not replayed:  # pruned meanwhile (a replay may leave any status: see INBOX_TRANSITIONS)
            raise InboxMessage.DoesNotExist(f"inbox message {row.pk} is gone")
        if plan.targets:
            Delivery.objects.bulk_create(
                Delivery(message_id=row.pk, workflow_id=w, node_id=n, created_at=now, updated_at=now)
                for w, n in plan.targets
            )
            _replay_recorded(row, plan.targets, now, {k: v for k, v in operator.items() if v})
            transaction.on_commit(partial(_dispatch, list(plan.targets)))
    return Routed(
        status=plan.status, matched=len(plan.targets), inbox_id=row.pk, reason=plan.reason, detail=plan.detail
    )


def _replay_recorded(
    row: InboxMessage, targets: list[tuple[Any, Any]], now: dt.datetime, operator: dict[str, str]
) -> None:
    """A ``message_replayed`` event in the history of each workflow the replay delivers to, on
    the listener's node. No workflow lock: history is append-only, and the delivery itself is
    handled by the listener's next claim under the lock, as any routed message is."""
    from ..models import HistoryRecord
    from ..models.history import history_event

    wanted = {node_id for _, node_id in targets}
    nodes = {
        n.id: {"name": n.name, "status": n.status, "attempts": n.attempts}
        for found in nodes_read_many({workflow_id for workflow_id, _ in targets}).values()
        for n in found
        if n.id in wanted
    }
    detail = {"message": row.pk, "topic": row.topic, **operator}
    records: dict[Any, list[list[Any]]] = defaultdict(list)
    for workflow_id, node_id in targets:
        node = nodes.get(node_id)
        if node is None:
            continue
        records[workflow_id].append(
            history_event(
                node_id=node_id,
                node_name=node["name"],
                from_status=node["status"],
                to_status=node["status"],
                attempt=node["attempts"],
                reason="message_replayed",
                detail=detail,
            )
        )
    HistoryRecord.objects.bulk_create(
        HistoryRecord(workflow_id=workflow_id, created_at=now, events=events)
        for workflow_id, events in records.items()
    )


def deliveries_close(state: WorkflowState, node: Node, *, outcome: str) -> int:
    """Inside the workflow's transaction: the listener's open deliveries (pending, buffered, or
    claimed by a worker running ``on_message``, whose result is then discarded as stale) are
    IGNORED with ``outcome``; their buffered messages count as routed. Returns how many. For an
    operator's skip or complete of the listener (``operations.node_skip``/``node_complete``)."""
    rows = _open_deliveries(state, node)
    if not rows:
        return 0
    _note_write(
        state,
        node,
        [r["id"] for r in rows],
        status=D.IGNORED,
        outcome=outcome,
        lease="",
        updated_at=state.now,
    )
    buffered = {r["message_id"] for r in rows if r["status"] == D.BUFFERED}
    if buffered:
        transition(
            InboxMessage.objects.filter(pk__in=buffered, status=InboxStatus.BUFFERED),
            InboxStatus.ROUTED,
            updated_at=state.now,
        )
    return len(rows)


def deliveries_waiting(state: WorkflowState, node: Node) -> bool:
    """Whether a delivery of the listener ``node`` is ready to be taken now (as this transaction
    left them): a resumed listener is handed to a worker when one is."""
    return _more_waiting(state, node, state.now)


# ==================================================================================================
# delivering (called by services.node_run for listener nodes; the workflow is locked)
# ==================================================================================================
@dataclass
class DeliveryWork:
    """The message a claimed delivery carries to ``on_message``."""

    id: int
    message_id: int
    topic: str
    payload: Any
    #: The message's bytes, kept for topics declared with value_type=bytes/str.
    raw: bytes | None = None


def _eligibility(state: WorkflowState, node: Node) -> str:
    """What a message can do to this listener now: deliver, skip_to, buffer or ignore:<why>."""
    wf_status = state.workflow.status
    config = node.config
    if node.status == S.NOT_STARTED:
        if config.get("allow_skip_to") and wf_status == S.EXECUTING:
            return "skip_to"
        if wf_status in ENDED_FOR_GOOD:
            return "ignore:workflow_finished"
        return "buffer"
    if node.status == S.EXECUTING:
        return "deliver"
    if node.status == S.SKIPPED and config.get("allow_skip_to"):
        return "deliver"
    if node.status == S.COMPLETED and config.get("reprocess_on_message"):
        return "deliver"
    if node.status == S.FAILURE and wf_status == S.FAILURE:
        return "buffer"  # the workflow halted here: a retry makes the listener wait again
    return f"ignore:listener_{str(node.status).lower()}"


def _buffer_ttl(node: Node) -> float:
    cls = correlation.listener_class(node.task_class)
    ttl = getattr(cls, "buffer_ttl_seconds", None)
    return float(dagger_settings.BUFFER_TTL_SECONDS if ttl is None else ttl)


_DELIVERY_FIELDS = (
    "id",
    "status",
    "lease",
    "attempts",
    "expires_at",
    "available_at",
    "updated_at",
    "message_id",
)
_MESSAGE_FIELDS = ("id", "topic", "payload", "raw", "status")
#: How many open deliveries of one listener a claim looks at.
_CLAIM_WINDOW = 200


class _Prefetched:
    """The open deliveries of a batch's listeners and their messages, read in one statement for
    the whole batch (:func:`deliveries_prefetched`) instead of two per listener."""

    def __init__(self, node_ids: list[uuid.UUID]) -> None:
        self.deliveries: dict[uuid.UUID, list[dict[str, Any]]] = {node_id: [] for node_id in node_ids}
        self.messages: dict[int, dict[str, Any]] = {}
        conn = transaction.get_connection()
        if conn.vendor != "postgresql":
            self._read_orm(node_ids)
            return
        with conn.cursor() as cursor:
            cursor.execute(_prefetch_sql(conn), [node_ids, list(OPEN_DELIVERY), _CLAIM_WINDOW])
            rows = cursor.fetchall()
        width = len(_DELIVERY_FIELDS)
        for row in rows:
            delivery = dict(zip(_DELIVERY_FIELDS, row[1 : 1 + width], strict=True))
            self.deliveries[row[0]].append(delivery)
            if row[1 + width] is not None:  # the listener's first delivery: its message too
                message = dict(zip(_MESSAGE_FIELDS, row[1 + width :], strict=True))
                message["payload"] = _json_column(message["payload"])
                self.messages[message["id"]] = message

    def _read_orm(self, node_ids: list[uuid.UUID]) -> None:
        # At most _CLAIM_WINDOW rows per listener, as a claim of one listener reads: a listener
        # with a long backlog must not load all of it into the batch.
        position = Window(RowNumber(), partition_by=[F("node_id")], order_by=F("id").asc())
        rows = (
            Delivery.objects.filter(node_id__in=node_ids, status__in=OPEN_DELIVERY)
            .annotate(position=position)
            .filter(position__lte=_CLAIM_WINDOW)
            .order_by("id")
            .values("node_id", *_DELIVERY_FIELDS)
        )
        for row in rows:
            self.deliveries[row.pop("node_id")].append(row)
        # The message each listener would take first: nearly always the one it takes.
        first = {rows[0]["message_id"] for rows in self.deliveries.values() if rows}
        if first:
            self.messages = {
                m["id"]: m for m in InboxMessage.objects.filter(pk__in=first).values(*_MESSAGE_FIELDS)
            }

    def message(self, message_id: int) -> dict[str, Any] | None:
        return self.messages.pop(message_id, None)


_PREFETCH_SQL: dict[str, str] = {}


def _prefetch_sql(conn: Any) -> str:
    """The open deliveries of some listeners (at most ``_CLAIM_WINDOW`` each, oldest first) and,
    with each listener's first one, its message: ``node_id``, ``_DELIVERY_FIELDS``,
    ``_MESSAGE_FIELDS`` (NULL on the other rows). Compiled once per connection alias."""
    sql = _PREFETCH_SQL.get(conn.alias)
    if sql is None:
        qn = conn.ops.quote_name
        dmeta, mmeta = Delivery._meta, InboxMessage._meta
        dcols = [qn(dmeta.get_field(name).column) for name in ("node_id", *_DELIVERY_FIELDS)]
        mcols = [qn(mmeta.get_field(name).column) for name in _MESSAGE_FIELDS]
        message_id = qn(dmeta.get_field("message_id").column)
        sql = _PREFETCH_SQL[conn.alias] = (
            "SELECT {d}, {m} FROM (SELECT {inner}, row_number() OVER (PARTITION BY {node} ORDER BY {pk})"
            " AS position FROM {dtable} WHERE {node} = ANY(%s) AND {status} = ANY(%s)) AS d"
            " LEFT JOIN {mtable} AS m ON d.position = 1 AND m.{mpk} = d.{message_id}"
            " WHERE d.position <= %s ORDER BY d.{pk}"
        ).format(
            d=", ".join(f"d.{c}" for c in dcols),
            m=", ".join(f"m.{c}" for c in mcols),
            inner=", ".join(dcols),
            node=qn(dmeta.get_field("node_id").column),
            pk=qn(dmeta.pk.column),  # type: ignore[union-attr]
            dtable=qn(dmeta.db_table),
            status=qn(dmeta.get_field("status").column),
            mtable=qn(mmeta.db_table),
            mpk=qn(mmeta.pk.column),  # type: ignore[union-attr]
            message_id=message_id,
        )
    return sql


def _json_column(value: Any) -> Any:
    """A ``jsonb`` value read with a cursor (Django has psycopg hand it over as text)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


_prefetched: contextvars.ContextVar[_Prefetched | None] = contextvars.ContextVar(
    "dagger_delivery_prefetch", default=None
)


@contextmanager
def deliveries_prefetched(node_ids: list[uuid.UUID]) -> Iterator[None]:
    """Within this block (inside the batch's transaction, the workflows locked), the claims of
    these listener nodes read their open deliveries and messages from two statements made for all
    of them. Deliveries another transaction adds meanwhile are taken by their own message later,
    as when they arrive after a claim."""
    token = _prefetched.set(_Prefetched(node_ids) if node_ids else None)
    try:
        yield
    finally:
        _prefetched.reset(token)


def _open_deliveries(state: WorkflowState, node: Node) -> list[dict[str, Any]]:
    """The listener's open deliveries, oldest first, as this transaction left them (its own
    writes are only noted so far: :func:`_note_write`)."""
    prefetched = _prefetched.get()
    if prefetched is not None and node.id in prefetched.deliveries:
        rows = prefetched.deliveries.pop(node.id)  # once: a second claim reads afresh
    else:
        rows = list(
            Delivery.objects.filter(node_id=node.id, status__in=OPEN_DELIVERY)
            .order_by("id")
            .values(*_DELIVERY_FIELDS)[:_CLAIM_WINDOW]
        )
    writes = state.delivery_writes
    if not writes:
        return rows
    out = []
    for row in rows:
        noted = writes.get(row["id"])
        if noted is not None:
            row = {**row, **{k: v for k, v in noted.fields.items() if k in row}}
            if row["status"] not in OPEN_DELIVERY:
                continue
        out.append(row)
    return out


# -- the writes of a transition to its deliveries ------------------------------------------------------
@dataclass
class _DeliveryWrite:
    """What a transition writes to one delivery row: ``fields``, and with ``guard`` only if the
    row is still CLAIMED with that ``(lease, attempts)`` (else it was taken over: :class:`Stale`)."""

    node_id: uuid.UUID
    fields: dict[str, Any]
    guard: tuple[str, int] | None = None


def _note_write(
    state: WorkflowState,
    node: Node,
    delivery_ids: Iterable[int],
    *,
    status: str,
    guard: tuple[str, int] | None = None,
    **fields: Any,
) -> None:
    """Note a write to deliveries of ``node``; :func:`deliveries_write` makes it, with those of
    the other workflows of a batch. A second write to a row in the same transition adds to the
    first (its guard was checked against the row as the transaction found it)."""
    writes = state.delivery_writes
    fields = {"status": status, **fields}
    for pk in delivery_ids:
        noted = writes.get(pk)
        if noted is None:
            writes[pk] = _DeliveryWrite(node.id, dict(fields), guard)  # a row of its own each
            continue
        if guard is not None and noted.guard is None:
            # The row was written by this transition: the guard holds if that write made it so.
            now = noted.fields
            if (now.get("status"), now.get("lease"), now.get("attempts")) != (D.CLAIMED, *guard):
                raise Stale
        noted.fields |= fields


def deliveries_write(states: Iterable[WorkflowState]) -> None:
    """Make the delivery writes the transitions of ``states`` noted: one statement per shape of
    write (the set of fields, guarded or not), whatever the number of workflows. Raises
    :class:`StaleDeliveries` when a guarded row no longer matched (the caller rolls back)."""
    groups: dict[tuple[tuple[str, ...], bool, str], list[tuple[int, _DeliveryWrite]]] = defaultdict(list)
    for state in states:
        for pk, noted in state.delivery_writes.items():
            key = (tuple(sorted(noted.fields)), noted.guard is not None, str(noted.fields["status"]))
            groups[key].append((pk, noted))
    stale: list[int] = []
    for (names, guarded, to), rows in groups.items():
        written = _update_deliveries(names, guarded, to, rows)
        if guarded:
            stale.extend(pk for pk, _ in rows if pk not in written)
    if stale:
        raise StaleDeliveries(sorted(stale))


_UPDATE_SQL: dict[tuple[Any, ...], tuple[str, list[tuple[str, Any]]]] = {}


def _update_deliveries(
    names: tuple[str, ...], guarded: bool, to: str, rows: list[tuple[int, _DeliveryWrite]]
) -> set[int]:
    """One ``UPDATE ... FROM unnest(...)`` for ``rows`` (same fields, same new status); the ids
    it updated. As :func:`~dagger_django.models.status.transition` does, the statuses the
    delivery table allows to move to ``to`` are part of the ``WHERE``."""
    conn = transaction.get_connection()
    if conn.vendor != "postgresql":
        written: set[int] = set()
        for pk, noted in rows:
            query = Delivery.objects.filter(pk=pk)
            if noted.guard is not None:
                query = query.filter(status=D.CLAIMED, lease=noted.guard[0], attempts=noted.guard[1])
            rest = {k: v for k, v in noted.fields.items() if k != "status"}
            if transition(query, to, **rest):
                written.add(pk)
        return written
    key = (conn.alias, names, guarded, to)
    cached = _UPDATE_SQL.get(key)
    if cached is None:
        qn = conn.ops.quote_name
        meta = Delivery._meta
        pk_field = meta.pk
        assert pk_field is not None
        fields = [meta.get_field(name) for name in names]
        columns = [(pk_field.column, pk_field.rel_db_type(conn))]
        columns += [(f.column, f.db_type(conn)) for f in fields]  # type: ignore[attr-defined]
        # The table's own status names (lower-case words), never data: safe as literals.
        allowed = allowed_from(DELIVERY_TRANSITIONS, to)
        assert all(source.isidentifier() for source in allowed), allowed
        sources = ", ".join(f"'{source}'" for source in allowed)
        guard = f" AND d.{qn(meta.get_field('status').column)} IN ({sources})"
        if guarded:
            columns += [("guard_lease", "text"), ("guard_attempts", "integer")]
            guard = (
                f" AND d.{qn(meta.get_field('status').column)} = %s"
                f" AND d.{qn(meta.get_field('lease').column)} = v.guard_lease"
                f" AND d.{qn(meta.get_field('attempts').column)} = v.guard_attempts"
            )
        sql = "UPDATE {} AS d SET {} FROM unnest({}) AS v({}) WHERE d.{} = v.{}{} RETURNING d.{}".format(
            qn(meta.db_table),
            ", ".join(f"{qn(f.column)} = v.{qn(f.column)}" for f in fields),
            ", ".join(f"%s::{db_type}[]" for _, db_type in columns),
            ", ".join(qn(column) for column, _ in columns),
            qn(pk_field.column),
            qn(pk_field.column),
            guard,
            qn(pk_field.column),
        )
        cached = _UPDATE_SQL[key] = (sql, field_preparers(conn, fields))
    sql, preparers = cached
    params: list[Any] = [[pk for pk, _ in rows]]
    for attname, prep in preparers:
        params.append([prep(noted.fields[attname], conn) for _, noted in rows])
    if guarded:
        params.append([noted.guard[0] for _, noted in rows])  # type: ignore[index]
        params.append([noted.guard[1] for _, noted in rows])  # type: ignore[index]
        params.append(D.CLAIMED.value)
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def _inbox_message(message_id: int) -> dict[str, Any] | None:
    prefetched = _prefetched.get()
    if prefetched is not None:
        found = prefetched.message(message_id)
        if found is not None:
            return found
    return InboxMessage.objects.filter(pk=message_id).values(*_MESSAGE_FIELDS).first()


def delivery_claim(state: WorkflowState, node: Node, lease: str) -> Work | None:
    """Take the listener's next message (or buffer/ignore what it cannot take). Lock held."""
    now = state.now
    rows = _open_deliveries(state, node)
    if not rows:
        return None
    stale_before = now - dt.timedelta(seconds=float(dagger_settings.DELIVERY_LEASE_SECONDS))
    mine = next((r for r in rows if r["status"] == D.CLAIMED and lease and r["lease"] == lease), None)
    if mine is None and any(r["status"] == D.CLAIMED and r["updated_at"] > stale_before for r in rows):
        return None  # another worker is running on_message for this listener; it hands on after
    decision = _eligibility(state, node)
    if decision == "buffer":
        _buffer(state, node, rows)
        return None
    if decision.startswith("ignore:"):
        reason = decision.split(":", 1)[1]
        _note_write(
            state, node, [r["id"] for r in rows], status=D.IGNORED, outcome=reason, lease="", updated_at=now
        )
        return None
    chosen = mine or next(
        (
            r
            for r in rows
            if (r["status"] == D.PENDING and (r["available_at"] is None or r["available_at"] <= now))
            or (r["status"] == D.BUFFERED and (r["expires_at"] is None or r["expires_at"] > now))
            or r["status"] == D.CLAIMED  # a stale claim: its worker is gone
        ),
        None,
    )
    if chosen is None:
        return None  # retries not due yet, or only expired buffered messages left
    message = _inbox_message(chosen["message_id"])
    if message is None:  # pragma: no cover - deliveries go with their message
        return None
    try:
        task = build_task(node, strict=True)
    except TaskClassNotFound as exc:
        _note_write(
            state,
            node,
            [chosen["id"]],
            status=D.FAILED,
            outcome="class_not_found",
            error=str(exc),
            updated_at=now,
        )
        if node.status == S.EXECUTING:
            walker.finish(state, node, S.FAILURE, reason="class_not_found", error=str(exc))
        return None
    if decision == "skip_to":
        skip_to(state, node)
    attempt = chosen["attempts"] + 1
    _note_write(
        state,
        node,
        [chosen["id"]],
        status=D.CLAIMED,
        lease=lease,
        attempts=attempt,
        available_at=None,
        updated_at=now,
        redispatch_at=None,
        redispatches=0,
    )
    if message["status"] == InboxStatus.BUFFERED:
        transition(
            InboxMessage.objects.filter(pk=message["id"], status=InboxStatus.BUFFERED),
            InboxStatus.ROUTED,
            updated_at=now,
        )
    task.status = node.status
    task.attempt = attempt
    task.idempotency_key = f"{node.id}:message-{chosen['id']}:{attempt}"
    return txn.work_build(
        state,
        node,
        task,
        attempt=attempt,
        delivery=DeliveryWork(
            id=chosen["id"],
            message_id=message["id"],
            topic=message["topic"],
            payload=message["payload"],
            raw=None if message["raw"] is None else bytes(message["raw"]),
        ),
    )


def _buffer(state: WorkflowState, node: Node, rows: list[dict[str, Any]]) -> None:
    """The listener has not started: keep its messages until it does (or until the TTL)."""
    now = state.now
    waiting = [r for r in rows if r["status"] != D.BUFFERED]
    if waiting:
        expires = now + dt.timedelta(seconds=_buffer_ttl(node))
        _note_write(
            state,
            node,
            [r["id"] for r in waiting],
            status=D.BUFFERED,
            expires_at=expires,
            lease="",
            updated_at=now,
        )
        transition(
            InboxMessage.objects.filter(pk__in={r["message_id"] for r in waiting}, status=InboxStatus.ROUTED),
            InboxStatus.BUFFERED,
            updated_at=now,
        )
    if not node.config.get("_buffered"):
        node.config = {**node.config, "_buffered": True}
        state.touch(node)


def delivery_execute(work: Work) -> Outcome:
    """Run ``on_message(runtime_parameters, payload)`` with no lock held (called by services;
    its ``Topic.send`` calls are collected around this call, as for any hook)."""
    from .hooks import call_hook

    assert work.delivery is not None
    try:
        # The value as the topic declares it; a record that cannot be built fails like on_message.
        delivery = work.delivery
        payload = payloads.listener_value(delivery.topic, delivery.payload, delivery.raw)
        value = call_hook(work.task.on_message, work.params, payload)
    except Exception as exc:
        import traceback

        logger.warning(
            "on_message of %s of workflow %s (business key %r) (message %s) raised %r",
            work.name,
            work.workflow_id,
            logs.work_key(work),
            work.delivery.message_id,
            exc,
            extra=logs.of_work(work),
        )
        return txn.Outcome(
            error=exc,
            error_text=f"{type(exc).__name__}: {exc}",
            details={"traceback": traceback.format_exc(limit=20)},
        )
    return txn.Outcome(value=resolve_hook_result(value))


class Stale(Exception):
    """The delivery was taken over while on_message ran: roll back and drop the result."""


class StaleDeliveries(Stale):
    """Guarded delivery writes that found their row taken over (``ids``): the transaction (or
    the workflow's savepoint) must be rolled back, and their results dropped."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(f"deliveries {ids} were taken over")
        self.ids = ids


def delivery_apply(work: Work, outcome: Outcome, *, lease: str, claim_next: bool) -> Work | None:
    """Apply what ``on_message`` returned, in a short locked transaction (called by services)."""
    try:
        with txn.locked(work.workflow_id) as state:
            return delivery_apply_in(state, work, outcome, lease=lease, claim_next=claim_next)
    except Stale:
        logger.info(
            "discarding the stale result of %s of workflow %s (business key %r) for message %s",
            work.name,
            work.workflow_id,
            logs.work_key(work),
            work.delivery,
            extra=logs.of_work(work),
        )
        return None
    except WorkflowDoesNotExist:
        return None


def delivery_apply_in(
    state: WorkflowState, work: Work, outcome: Outcome, *, lease: str, claim_next: bool
) -> Work | None:
    """Inside the workflow's transaction: apply ``on_message``'s result. Raises :class:`Stale`
    (roll the transaction or its savepoint back) when the delivery was taken over meanwhile."""
    node = state.get(work.node_id)
    if node is None:
        raise Stale
    _apply_delivery(state, node, work, outcome, lease)
    if not (claim_next and state.to_dispatch):
        return None
    next_id = state.to_dispatch.pop(0)
    return txn.claim_node(state, state.node(next_id), lease)


def _apply_delivery(state: WorkflowState, node: Node, work: Work, outcome: Outcome, lease: str) -> None:
    delivery = work.delivery
    assert delivery is not None
    now = state.now
    eligible = _eligibility(state, node) == "deliver"
    to: str
    fields: dict[str, Any] = {"lease": "", "updated_at": now}
    finish: tuple[str, str, str] | None = None  # (status, reason, error) for the node
    value: Any = None
    merged: _Merged | None = None
    if not eligible:
        # Stopped, skipped or failed while on_message ran: the result is not wanted.
        to = D.IGNORED
        fields["outcome"] = f"listener_{str(node.status).lower()}"
    elif outcome.error is not None:
        retry_at = _retry_due(work, outcome, now)
        if retry_at is not None:
            to = D.PENDING
            fields.update(outcome="retry_scheduled", error=outcome.error_text[:4000], available_at=retry_at)
        else:
            to = D.FAILED
            fields.update(outcome="raised", error=outcome.error_text[:4000])
            finish = (S.FAILURE, "message_failed", outcome.error_text)
    elif not isinstance(outcome.value, bool):
        text = f"InvalidTaskResult: on_message returned {outcome.value!r}, not True or False"
        to = D.FAILED
        fields.update(outcome="invalid_result", error=text[:4000])
        finish = (S.FAILURE, "invalid_result", text)
    else:
        value = outcome.value
        try:
            # Checked before the row's write is noted, so the row moves once: DELIVERED, or FAILED.
            merged = _parameters_merged(state, work)
        except DaggerError as exc:
            text = f"{type(exc).__name__}: {exc}"
            to = D.FAILED
            fields.update(outcome="invalid_result", error=text[:4000])
            finish = (S.FAILURE, "invalid_result", text)
        else:
            done = value and node.status in (S.EXECUTING, S.SKIPPED)
            label = "completed" if done else "reprocessed" if node.status == S.COMPLETED else "waiting"
            to = D.DELIVERED
            fields["outcome"] = label
    # Made when the transition is written (deliveries_write), or rolled back with it if the
    # delivery was taken over meanwhile (Stale).
    _note_write(state, node, [delivery.id], status=to, guard=(lease, work.attempt), **fields)
    if to == D.DELIVERED:
        if merged is not None:
            txn.set_parameters(
                state, merged.parameters, changed=merged.changed, removed=merged.removed, node=node
            )
        outbox.stage(state, node, outcome.sends)
        state.record(
            reason="message_received",
            detail={"message": delivery.message_id, "topic": delivery.topic, "result": value},
            node=node,
        )
        if value and node.status in (S.EXECUTING, S.SKIPPED):
            walker.finish(state, node, S.COMPLETED, reason="message")
    if finish is not None and node.status == S.EXECUTING:
        walker.finish(state, node, finish[0], reason=finish[1], error=finish[2])
    if correlation.keeps_subscription(node) and _more_waiting(state, node, now):
        state.to_dispatch.append(node.id)


def _retry_due(work: Work, outcome: Outcome, now: dt.datetime) -> dt.datetime | None:
    """Apply the listener class's retry policy to a raising on_message: when to try it again,
    or None (no retry)."""
    delay = RetryPolicy.for_task(type(work.task)).retry_delay(outcome.error, work.attempt)
    return None if delay is None else now + dt.timedelta(seconds=delay)


@dataclass
class _Merged:
    parameters: dict[str, Any]
    changed: list[str]
    removed: list[str]


def _parameters_merged(state: WorkflowState, work: Work) -> _Merged | None:
    """The runtime parameters once ``on_message``'s changes are merged (None: no change).
    Reads only; raises a ``DaggerError`` when the result cannot be stored."""
    changed, removed = parameters.diff(work.params_json, work.params)
    if not (changed or removed):
        return None
    merged = parameters.merge(state.workflow.runtime_parameters, changed, removed)
    parameters.validate(merged)
    return _Merged(merged, sorted(changed), removed)


def _more_waiting(state: WorkflowState, node: Node, now: dt.datetime) -> bool:
    """Whether a delivery of ``node`` is ready to be taken, as this transaction left them."""
    noted = [(pk, w) for pk, w in state.delivery_writes.items() if w.node_id == node.id]
    for _, write in noted:
        if write.fields.get("status") == D.PENDING:
            available = write.fields.get("available_at")
            if available is None or available <= now:
                return True
    query = Delivery.objects.filter(node_id=node.id, status=D.PENDING).filter(
        Q(available_at__isnull=True) | Q(available_at__lte=now)
    )
    if noted:
        query = query.exclude(pk__in=[pk for pk, _ in noted])
    return query.exists()


# -- allow_skip_to ------------------------------------------------------------------------------------
def skip_to(state: WorkflowState, node: Node) -> None:
    """Jump to ``node``: everything that had to happen before it and has not finished is SKIPPED.

    "Before it" is, at every level from the listener up to the workflow, the chain of nodes that
    leads to it (with all their children), the way the original's ``get_remaining_tasks`` walk
    found them; branches of a parallel group that contains the listener are left alone. Its
    containers that had not started are started (without starting their first task), and the
    listener waits - its message is handed to ``on_message`` right after.
    """
    current = node
    while current is not None:
        for before in _chain_before(state, current):
            _skip_subtree(state, before)
        parent = state.get(current.parent_id)
        current = parent
    ancestors = []
    parent = state.get(node.parent_id)
    while parent is not None:
        ancestors.append(parent)
        parent = state.get(parent.parent_id)
    path = [*reversed(ancestors), node]
    for container, inner in zip(path, path[1:], strict=False):
        if container.status != S.NOT_STARTED:
            continue
        state.set_status(container, S.EXECUTING, reason="skipped_to", detail={"to": node.name})
        if container.kind == NodeKind.PROCESS:
            timing.process_started(state, container)
        elif container.kind == NodeKind.PARALLEL:
            # The group's other branches run as if the group had started normally.
            mine = str(walker.branch_head(state, container, inner))
            for head_id in container.child_ids:
                head = state.get(head_id)
                if head is not None and str(head.id) != mine and state.active:
                    walker.start(state, head)
    state.set_status(node, S.EXECUTING, reason="skipped_to")


def _chain_before(state: WorkflowState, node: Node) -> list[Node]:
    siblings = state.children(node.parent_id)
    previous: dict[str, list[Node]] = defaultdict(list)
    for sibling in siblings:
        for nxt in sibling.next_ids:
            previous[str(nxt)].append(sibling)
    found: list[Node] = []
    seen = {str(node.id)}
    stack = [str(node.id)]
    while stack:
        for before in previous.get(stack.pop(), ()):
            if str(before.id) not in seen:
                seen.add(str(before.id))
                found.append(before)
                stack.append(str(before.id))
    return found


def _skip_subtree(state: WorkflowState, top: Node) -> None:
    for n in [top, *state.descendants(top)]:
        if n.status not in TERMINAL:
            state.set_status(n, S.SKIPPED, reason="skipped_by_skip_to")


# ==================================================================================================
# sweeps (run by every bridge, see docs/bridge.md)
# ==================================================================================================
def deliveries_expire(*, limit: int = 5000) -> int:
    """Buffered messages whose TTL passed are dropped (EXPIRED, replayable)."""
    now = ports.now()
    rows = list(
        Delivery.objects.filter(status=D.BUFFERED, expires_at__lte=now).values_list("id", "message_id")[
            :limit
        ]
    )
    if not rows:
        return 0
    with transaction.atomic():
        count = transition(
            Delivery.objects.filter(pk__in=[r[0] for r in rows], status=D.BUFFERED),
            D.EXPIRED,
            outcome="buffer_ttl",
            updated_at=now,
        )
        transition(
            InboxMessage.objects.filter(pk__in={r[1] for r in rows}, status=InboxStatus.BUFFERED).exclude(
                deliveries__status__in=OPEN_DELIVERY
            ),
            InboxStatus.EXPIRED,
            updated_at=now,
        )
    return count


def deliveries_redispatch(*, limit: int = 1000) -> int:
    """Hand out again deliveries whose retry is due, whose worker is gone, or whose dispatch may
    have been lost; returns how many deliveries were handed out.

    - a PENDING delivery whose retry is due (``available_at``) is sent at once;
    - a CLAIMED delivery is taken back only when its ``updated_at`` is older than
      ``DELIVERY_LEASE_SECONDS``: the worker running ``on_message`` refreshes it every
      ``HEARTBEAT_SECONDS`` (engine/heartbeat.py), so only a dead worker's claim gets that old;
    - a PENDING delivery still waiting one lease after it was routed may only be queued behind a
      long backlog: it is sent again at most once per lease, then after 2, 4 and 8 leases
      (``redispatch_at`` / ``redispatches``), so a slow queue is not flooded with copies.

    The rows are locked in id order with SKIP LOCKED: a row a worker's claim or apply holds is
    left for the next sweep, and two sweeps never wait on each other (they once deadlocked with a
    worker, each locking the same rows in another order)."""
    now = ports.now()
    lease = float(dagger_settings.DELIVERY_LEASE_SECONDS)
    stale = now - dt.timedelta(seconds=lease)
    due = Q(status=D.PENDING, available_at__lte=now)
    dead = Q(status=D.CLAIMED, updated_at__lte=stale)
    waiting = Q(status=D.PENDING, available_at__isnull=True) & (
        Q(redispatch_at__lte=now) | Q(redispatch_at__isnull=True, updated_at__lte=stale)
    )
    with transaction.atomic():
        rows = list(
            Delivery.objects.filter(due | dead | waiting)
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", "workflow_id", "node_id", "status", "available_at", "redispatches")[:limit]
        )
        if not rows:
            return 0
        # A due retry or a dead worker's claim: a fresh start, waiting one lease before a re-send.
        fresh = [r[0] for r in rows if r[3] == D.CLAIMED or r[4] is not None]
        if fresh:
            transition(
                Delivery.objects.filter(pk__in=fresh),
                D.PENDING,
                lease="",
                available_at=None,
                updated_at=now,
                redispatch_at=None,
                redispatches=0,
            )
        # A waiting one: the next re-send after its backoff (one UPDATE per count, a few at most).
        by_count: dict[int, list[int]] = defaultdict(list)
        for r in rows:
            if r[3] == D.PENDING and r[4] is None:
                by_count[r[5]].append(r[0])
        for count, ids in by_count.items():
            Delivery.objects.filter(pk__in=ids).update(
                redispatches=count + 1, redispatch_at=now + resend_after(count + 1, lease)
            )
        transaction.on_commit(partial(_dispatch, list(dict.fromkeys((r[1], r[2]) for r in rows))))
    return len(rows)


#: Inbox statuses that are final (nothing will change them but a replay), and the setting that
#: says how many days such a row is kept.
INBOX_RETENTION = (
    ((InboxStatus.ROUTED, InboxStatus.UNMATCHED, InboxStatus.EXPIRED), "INBOX_RETENTION_DAYS"),
    ((InboxStatus.INVALID,), "INBOX_DEAD_LETTER_RETENTION_DAYS"),
)


def inbox_prune(*, limit: int = 5000) -> int:
    """Delete inbox rows in a final status older than their retention (``INBOX_RETENTION_DAYS``
    for routed, unmatched and expired messages, ``INBOX_DEAD_LETTER_RETENTION_DAYS`` for dead
    letters; 0 keeps them). A row with an open delivery is never deleted; buffered rows are not
    final (their TTL expires them first). At most ``limit`` rows per status group and call."""
    pruned = 0
    now = ports.now()
    for statuses, setting in INBOX_RETENTION:
        days = float(getattr(dagger_settings, setting))
        if days <= 0:
            continue
        cutoff = now - dt.timedelta(days=days)
        ids = list(
            InboxMessage.objects.filter(status__in=statuses, received_at__lt=cutoff)
            .exclude(deliveries__status__in=OPEN_DELIVERY)
            .values_list("id", flat=True)[:limit]
        )
        if not ids:
            continue
        with transaction.atomic():
            # A replay may have given one of them a delivery since: keep that one.
            reopened = set(
                Delivery.objects.filter(message_id__in=ids, status__in=OPEN_DELIVERY).values_list(
                    "message_id", flat=True
                )
            )
            ids = [pk for pk in ids if pk not in reopened]
            Delivery.objects.filter(message_id__in=ids).delete()
            InboxMessage.objects.filter(pk__in=ids).delete()
        pruned += len(ids)
    return pruned


@dataclass
class SweepResult:
    expired: int = 0
    redispatched: int = 0
    pruned: int = 0
    relayed: int = 0
    #: Sent outbox rows deleted (OUTBOX_RETENTION_DAYS).
    outbox_pruned: int = 0

    def total(self) -> int:
        return sum(dataclasses.astuple(self))


def messages_sweep(*, relay_grace_seconds: float = 10.0) -> SweepResult:
    """One sweep: expire buffered messages, redispatch lost deliveries, prune the inbox and the
    sent outbox rows, and send outbox rows older than ``relay_grace_seconds`` that no
    after-commit relay sent. First, if the broker lost its messages since the last look (it
    restarted empty), the re-send backoffs are dropped (``recovery.broker_loss_check``)."""
    recovery.broker_loss_check()
    result = SweepResult(
        expired=deliveries_expire(), redispatched=deliveries_redispatch(), pruned=inbox_prune()
    )
    result.relayed = outbox.relay_pending(grace_seconds=relay_grace_seconds)
    result.outbox_pruned = outbox.outbox_prune()
    return result


__all__ = [
    "DUPLICATE",
    "DeliveryWork",
    "Incoming",
    "Routed",
    "SweepResult",
    "decode_json",
    "deliveries_expire",
    "deliveries_redispatch",
    "delivery_apply",
    "delivery_claim",
    "delivery_execute",
    "deliveries_write",
    "inbox_prune",
    "message_receive",
    "message_replay",
    "messages_route",
    "messages_sweep",
    "skip_to",
]
