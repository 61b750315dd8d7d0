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
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from django.db import transaction
from django.db.models import F

from ..conf import dagger_settings
from ..models import Node, OutboxKind, OutboxMessage
from . import ports
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
        headers=encode_headers(headers),
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
        headers=[],
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
    sweeps. Returns how many rows were sent. Must never raise for a broker problem."""

    def relay(self, *, ids: list[int] | None = None, older_than: dt.datetime | None = None) -> int: ...


#: ``publish(rows) -> {row id: None when sent, else the error text}``.
Publish = Callable[[list[OutboxMessage]], dict[int, str | None]]

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
    """on_commit: send these rows now. A failure only delays them until a sweep."""
    try:
        relay = get_relay()
        if relay is not None:
            relay.relay(ids=ids)
    except Exception:
        logger.exception("outbox relay failed for %s rows; a sweep will send them", len(ids))


def outbox_relay(
    *,
    publish: Publish,
    ids: list[int] | None = None,
    older_than: dt.datetime | None = None,
    limit: int = 500,
) -> int:
    """Claim unsent rows (``SKIP LOCKED``: concurrent relays share the rows), publish, mark them.

    Rows are published in id order while their row locks are held, then marked sent in the same
    transaction. A row that failed keeps ``sent_at`` empty and records the error. Returns the
    number of rows sent.
    """
    with transaction.atomic():
        qs = OutboxMessage.objects.select_for_update(skip_locked=True).filter(sent_at__isnull=True)
        if ids is not None:
            qs = qs.filter(pk__in=ids)
        if older_than is not None:
            qs = qs.filter(created_at__lte=older_than)
        rows = list(qs.order_by("id")[:limit])
        if not rows:
            return 0
        results = publish(rows)
        sent = [row.pk for row in rows if row.pk in results and results[row.pk] is None]
        if sent:
            OutboxMessage.objects.filter(pk__in=sent).update(sent_at=ports.now(), attempts=F("attempts") + 1)
        failed: dict[str, list[int]] = {}
        for row in rows:
            if row.pk not in sent:
                failed.setdefault(results.get(row.pk) or "not acknowledged", []).append(row.pk)
        for error, pks in failed.items():
            OutboxMessage.objects.filter(pk__in=pks).update(
                attempts=F("attempts") + 1, last_error=error[:2000]
            )
        if failed:
            logger.warning("outbox: %s of %s messages not sent yet", len(rows) - len(sent), len(rows))
        return len(sent)


__all__ = [
    "MESSAGE_ID_HEADER",
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
    "outbox_relay",
    "outbox_send",
    "relay_after_commit",
    "reset_relay",
    "set_relay",
    "stage",
    "workflow_snapshot",
]
