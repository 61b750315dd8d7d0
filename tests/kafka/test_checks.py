"""System checks of the messaging settings."""

from __future__ import annotations

from typing import Any

from dagger_django.checks import check_messaging_settings


def ids(settings: Any, **dagger: Any) -> set[str]:
    settings.DAGGER = dagger
    return {problem.id for problem in check_messaging_settings()}


def test_default_settings_pass(settings: Any) -> None:
    assert ids(settings) == set()


def test_incoherent_messaging_settings_are_reported(settings: Any) -> None:
    assert ids(settings, KAFKA="kafka:9092") == {"dagger_django.E020"}
    assert ids(settings, OUTBOX_RELAY="nowhere.Relay") == {"dagger_django.E021"}
    assert ids(settings, BUFFER_TTL_SECONDS=0) == {"dagger_django.E022"}
    assert ids(settings, INBOX_RETENTION_DAYS=-1) == {"dagger_django.E023"}
    assert ids(settings, KAFKA_GROUP_ID="") == {"dagger_django.E024"}
    assert ids(settings, KAFKA_CONSUMER_FACTORY="nowhere.make_consumer") == {"dagger_django.E025"}


def test_incoherent_outbox_settings_are_reported(settings: Any) -> None:
    assert ids(settings, OUTBOX_MAX_ATTEMPTS=0) == {"dagger_django.E040"}
    assert ids(settings, OUTBOX_RETRY_DELAY=-1) == {"dagger_django.E041"}
    # a lease shorter than the relay's wait lets a second relay send the rows again meanwhile
    assert ids(settings, OUTBOX_LEASE_SECONDS=5) == {"dagger_django.E042"}
