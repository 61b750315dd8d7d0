"""Message values as their topic declares them (``Dagger.create_topic(..., value_type=...)``).

The original handed listeners the value Faust had decoded for the topic: raw bytes for
``value_type=bytes`` (its listeners call ``json.loads(payload)``), text for ``str``, an instance
for a record type, decoded JSON when nothing was declared. The engine routes and stores decoded
JSON (searchable, shown in the admin) and, for topics that declare bytes or text, the message's
bytes as they arrived; this module turns what is stored back into the declared value, right
before user code sees it (key extraction in the router, ``on_message`` on a worker).

Pure Python: it reads the topic registry of :class:`~.registry.Dagger`, nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from .registry import Dagger

#: ``value_serializer`` names (Faust's codecs) that mean "the bytes as they are".
RAW_SERIALIZERS = frozenset({"raw", "binary"})
#: Declared value types that are plain JSON values: the decoded payload is handed on unchanged.
JSON_TYPES = (dict, list, int, float, bool)


def declared_topic(topic: str) -> Any:
    """The topic object created for ``topic`` (``Dagger.create_topic``), or None.

    Reads the registry without creating an entry (``Dagger.topics[name]`` would create one).
    """
    return dict.get(Dagger.topics, topic)


def value_kind(topic: str) -> str:
    """How the topic's listeners get a value: ``"bytes"``, ``"str"``, ``"record"`` or ``"json"``."""
    declared = declared_topic(topic)
    if declared is None:
        return "json"
    value_type = getattr(declared, "value_type", None)
    serializer = getattr(declared, "value_serializer", None)
    if value_type is bytes or (value_type is None and serializer in RAW_SERIALIZERS):
        return "bytes"
    if value_type is str:
        return "str"
    if value_type is None or value_type is Any or value_type in JSON_TYPES:
        return "json"
    return "record"


def keeps_raw(topic: str) -> bool:
    """Whether messages of ``topic`` keep their bytes: listeners get them, or text made of them.

    Such a topic also accepts values that are not JSON (its listeners decode them).
    """
    return value_kind(topic) in ("bytes", "str")


def encoded_form(value: Any) -> bytes:
    """The bytes a JSON value travels as on Kafka (what ``Topic.send`` writes for it): text as
    UTF-8, anything else as compact JSON. ``POST events/`` uses it for bytes and text topics."""
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def listener_value(topic: str, payload: Any, raw: Any = None) -> Any:
    """The value a listener of ``topic`` gets for a message stored as ``payload`` (decoded JSON,
    None when the bytes were not JSON) and ``raw`` (its bytes, kept for bytes and text topics).

    Building a record instance is user code: a failure raises here, where the caller treats it as
    the listener's own error.
    """
    kind = value_kind(topic)
    if kind == "json":
        return payload
    if kind in ("bytes", "str"):
        data = bytes(raw) if raw is not None else None if payload is None else encoded_form(payload)
        if kind == "bytes" or data is None:
            return data
        return data.decode("utf-8")
    return record_from(declared_topic(topic).value_type, payload)


def record_from(value_type: type, payload: Any) -> Any:
    """An instance of a declared record type from decoded JSON: Faust records (``from_data``),
    pydantic models (``model_validate``/``parse_obj``), dataclasses and plain classes (keyword
    arguments from an object, the value itself otherwise)."""
    if isinstance(value_type, type) and isinstance(payload, value_type):
        return payload
    for name in ("from_data", "model_validate", "parse_obj"):
        factory = getattr(value_type, name, None)
        if callable(factory):
            return factory(payload)
    if isinstance(payload, dict):
        return value_type(**payload)
    return value_type(payload)


__all__ = ["declared_topic", "encoded_form", "keeps_raw", "listener_value", "record_from", "value_kind"]
