"""Kafka messages to the engine's :class:`~dagger_django.engine.messages.Incoming`, and back.

Nothing a producer can put in a message may raise here: whatever cannot be read becomes an
invalid message (a dead letter with a reason) that keeps the bytes, and :func:`undecodable` is
the fallback for anything this module did not foresee.
"""

from __future__ import annotations

from typing import Any

from ..definitions.payloads import keeps_raw
from ..engine.messages import Incoming, clean_text, decode_json
from ..engine.outbox import MESSAGE_ID_HEADER

#: Longest message id accepted from a header (longer ones are ignored, not truncated).
MAX_MESSAGE_ID = 200


def _strict_text(value: bytes) -> str | None:
    """``value`` as text a text column takes exactly (UTF-8, no NUL), else None."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def _message_id(value: Any) -> tuple[str | None, str]:
    """``(id, problem)`` from a ``dagger-message-id`` header value; ``problem`` makes a dead letter.

    An empty or over-long id is ignored (the message is deduplicated by its offset); bytes that
    are not clean text cannot be an id the producer meant, and storing them would fail.
    """
    if value is None:
        return None, ""
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
    if not raw or len(raw) > MAX_MESSAGE_ID * 4:
        return None, ""
    text = _strict_text(raw)
    if text is None:
        return None, f"the {MESSAGE_ID_HEADER} header is not UTF-8 text without NUL: {raw[:60]!r}"
    if len(text) > MAX_MESSAGE_ID:
        return None, ""
    return text, ""


def from_kafka(message: Any, *, incarnation: str = "") -> Incoming:
    """A consumed ``confluent_kafka.Message`` as an engine message.

    The value must be UTF-8 JSON of at most ``MAX_MESSAGE_BYTES``; anything else becomes an
    invalid message (a dead letter) that keeps its bytes. On a topic declared with
    ``value_type=bytes`` or ``str`` any value up to that size is valid (``definitions.payloads``).
    A ``dagger-message-id`` header (set by every outbox relay) is the message's id, so a message
    relayed twice is routed once; a header that is not clean text makes a dead letter
    (``bad_message_id``). ``incarnation`` says which incarnation of the topic the offset belongs
    to (see ``docs/bridge.md``).
    """
    headers: dict[str, Any] = {}
    message_id_raw: Any = None
    for name, value in message.headers() or []:
        headers[clean_text(name, 200)] = value
        if name == MESSAGE_ID_HEADER:
            message_id_raw = value
    message_id, problem = _message_id(message_id_raw)
    raw = message.value()
    if problem:
        payload, reason, detail = None, "bad_message_id", problem
    else:
        payload, reason, detail = decode_json(raw)
        # A topic declared with value_type=bytes/str hands its listeners the bytes (or their
        # text): accept values that are not JSON (the listener decodes them itself).
        if reason == "not_json" and keeps_raw(message.topic()):
            payload, reason, detail = None, "", ""
    key = message.key()
    text_key = None if key is None else _strict_text(key)
    return Incoming(
        topic=message.topic(),
        source="kafka",
        partition=message.partition(),
        offset=message.offset(),
        message_id=message_id,
        key=text_key if key is None or text_key is not None else clean_text(key, 10_000),
        raw_key=None if key is None or text_key is not None else key,
        headers=headers,
        payload=payload,
        raw=raw,
        invalid=reason,
        detail=detail,
        incarnation=incarnation,
        # decode_json checked that the database stores the payload (routing need not again).
        storable=not reason and payload is not None,
    )


def undecodable(message: Any, exc: BaseException, *, incarnation: str = "") -> Incoming:
    """The dead letter (``internal_error``) of a message :func:`from_kafka` failed on: only what
    librdkafka guarantees (topic, partition, offset) and the bytes, no interpretation."""

    def attempt(read: Any) -> Any:
        try:
            return read()
        except Exception:  # noqa: BLE001 - as much as can be read
            return None

    value, key = attempt(message.value), attempt(message.key)
    headers = attempt(lambda: {clean_text(n, 200): v for n, v in message.headers() or []}) or {}
    return Incoming(
        topic=clean_text(message.topic(), 255),
        source="kafka",
        partition=message.partition(),
        offset=message.offset(),
        raw=value if isinstance(value, bytes) else None,
        raw_key=key if isinstance(key, bytes) else None,
        headers=headers,
        invalid="internal_error",
        detail=clean_text(f"decoding failed: {type(exc).__name__}: {exc}", 2000),
        incarnation=incarnation,
    )
