"""``Dagger.app.schema_registry_client`` and ``Dagger.app.message_serializer`` for Avro.

The original built a schema-registry client and a ``MessageSerializer`` from ``schema_registry_url``
for user tasks (the engine itself never used them). Here both come from confluent-kafka's
schema-registry support, installed by the optional ``avro`` extra
(``pip install "dagger-django[avro]"``). Nothing is imported until a task reads them, so projects
without the extra only see an error if they set ``schema_registry_url`` and use it.
"""

from __future__ import annotations

import json
from typing import Any

from ..exceptions import SchemaRegistryUnavailable

INSTALL_HINT = 'pip install "dagger-django[avro]" (confluent-kafka\'s schema registry and fastavro)'


def schema_registry_build(url: str) -> tuple[Any, Any]:
    """``(client, serializer)`` for a registry URL (``mock://...`` gives confluent's in-memory one)."""
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer  # noqa: F401 - needs fastavro
    except ImportError as exc:
        raise SchemaRegistryUnavailable(
            f"schema_registry_url is set but the schema registry support is not installed ({exc}): "
            + INSTALL_HINT
        ) from exc
    client = SchemaRegistryClient.new_client({"url": url})
    return client, MessageSerializer(client)


def _schema_text(schema: Any) -> str:
    """An Avro schema given as JSON text, a dict, or an object carrying its text (``schema_str``,
    the original's ``AvroSchema.flat_schema``/``.schema``)."""
    if isinstance(schema, str):
        return schema
    for name in ("schema_str", "flat_schema", "schema"):
        value = getattr(schema, name, None)
        if value is not None:
            return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(schema)


class MessageSerializer:
    """Confluent-framed Avro with the method names of the original's ``MessageSerializer``.

    ``encode_record_with_schema`` registers the schema under ``<topic>-value`` (``-key`` for
    keys) and returns the framed bytes; ``decode_message`` reads the schema id from the frame.
    """

    def __init__(self, client: Any) -> None:
        self.schemaregistry_client = client
        self._serializers: dict[tuple[str, bool], Any] = {}

    def _context(self, topic: str, is_key: bool) -> Any:
        from confluent_kafka.serialization import MessageField, SerializationContext

        return SerializationContext(topic, MessageField.KEY if is_key else MessageField.VALUE)

    def encode_record_with_schema(self, topic: str, schema: Any, record: Any, is_key: bool = False) -> bytes:
        from confluent_kafka.schema_registry.avro import AvroSerializer

        text = _schema_text(schema)
        serializer = self._serializers.get((text, is_key))
        if serializer is None:
            serializer = AvroSerializer(self.schemaregistry_client, text)
            self._serializers[(text, is_key)] = serializer
        return bytes(serializer(record, self._context(topic, is_key)))

    def decode_message(self, message: bytes | None, is_key: bool = False, topic: str = "") -> Any:
        if message is None:
            return None
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        return AvroDeserializer(self.schemaregistry_client)(message, self._context(topic, is_key))


__all__ = ["INSTALL_HINT", "MessageSerializer", "schema_registry_build"]
