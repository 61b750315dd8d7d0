"""``schema_registry_url``: ``Dagger.app.schema_registry_client`` and ``message_serializer`` (the
optional ``avro`` extra), on confluent-kafka's in-memory registry (``mock://``)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest

from dagger_django import Dagger, SchemaRegistryUnavailable

ORDER = {
    "type": "record",
    "name": "Order",
    "fields": [{"name": "order_id", "type": "string"}, {"name": "pizzas", "type": "int"}],
}


@pytest.fixture
def restore_app() -> Iterator[None]:
    previous = Dagger.app
    yield
    Dagger.app = previous


def test_message_serializer_round_trips_avro_through_the_registry(restore_app: None) -> None:
    app = Dagger(schema_registry_url=f"mock://{uuid.uuid4().hex}")
    encoded = Dagger.app.message_serializer.encode_record_with_schema(  # type: ignore[union-attr]
        "orders", ORDER, {"order_id": "o-1", "pizzas": 2}
    )
    assert encoded[0] == 0  # confluent framing: magic byte, then the schema id
    assert app.message_serializer.decode_message(encoded, topic="orders") == {"order_id": "o-1", "pizzas": 2}
    [subject] = app.schema_registry_client.get_subjects()
    assert subject == "orders-value"


def test_without_a_url_there_is_no_client_and_no_warning(
    restore_app: None, recwarn: pytest.WarningsRecorder
) -> None:
    app = Dagger()
    assert app.schema_registry_client is None and app.message_serializer is None
    assert not recwarn.list


def test_a_url_without_the_avro_extra_says_what_to_install(
    restore_app: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka.schema_registry", None)  # as if not installed
    app = Dagger(schema_registry_url="http://registry:8081")
    with pytest.raises(SchemaRegistryUnavailable, match=r"dagger-django\[avro\]"):
        _ = app.schema_registry_client
