"""Kafka messages to the engine's :class:`~dagger_django.engine.messages.Incoming`, and back."""

from __future__ import annotations

from typing import Any

from ..definitions.payloads import keeps_raw
from ..engine.messages import Incoming, decode_json
from ..engine.outbox import MESSAGE_ID_HEADER

#: Longest message id accepted from a header (longer ones are ignored, not truncated).
MAX_MESSAGE_ID = 200


def _header_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def from_kafka(message: Any) -> Incoming:
    """A consumed ``confluent_kafka.Message`` as an engine message.

    The value must be UTF-8 JSON of at most ``MAX_MESSAGE_BYTES``; anything else becomes an
    invalid message (a dead letter) that keeps its bytes. On a topic declared with
    ``value_type=bytes`` or ``str`` any value up to that size is valid and its bytes are kept
    (``definitions.payloads``). A ``dagger-message-id`` header (set by
    every outbox relay) is the message's id, so a message relayed twice is routed once.
    """
    headers: dict[str, Any] = {}
    for name, value in message.headers() or []:
        headers[str(name)] = _header_text(value)
    message_id = headers.get(MESSAGE_ID_HEADER)
    if message_id is not None and (not message_id or len(message_id) > MAX_MESSAGE_ID):
        message_id = None
    raw = message.value()
    payload, reason, detail = decode_json(raw)
    # A topic declared with value_type=bytes/str hands its listeners the bytes (or their text):
    # keep them, and accept values that are not JSON (the listener decodes them itself).
    keep_raw = keeps_raw(message.topic())
    if keep_raw and reason == "not_json":
        payload, reason, detail = None, "", ""
    key = message.key()
    return Incoming(
        topic=message.topic(),
        source="kafka",
        partition=message.partition(),
        offset=message.offset(),
        message_id=message_id,
        key=None if key is None else _header_text(key),
        headers=headers,
        payload=payload,
        raw=raw if reason or keep_raw else None,
        invalid=reason,
        detail=detail,
    )
