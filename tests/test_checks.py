"""Checks dagger_django.E050/W050: the Celery app dagger sends through (docs/install.md).

A project that installs dagger_django but never makes a Celery app of its own, or gives it no
broker, would send every task to Celery's built-in ``amqp://guest@localhost//`` while
``manage.py check`` stayed silent. Celery reads ``CELERY_BROKER_URL`` from the environment before
any setting, and the test run exports it, so the cases without a broker remove it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, _state, current_app

from dagger_django.checks import check_settings

from .test_settings import manage

CHECK_IDS = {"dagger_django.E050", "dagger_django.W050", "dagger_django.E051"}


def celery_app_problems() -> dict[str, Any]:
    return {p.id: p for p in check_settings() if p.id in CHECK_IDS}


@pytest.fixture
def without_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's Celery app (config.celery.app here) with no broker URL anywhere."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_WRITE_URL", raising=False)
    monkeypatch.setitem(current_app.conf, "broker_url", None)
    monkeypatch.setitem(current_app.conf, "broker_write_url", None)


@pytest.fixture
def fallback_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """What a project without ``celery.py`` and its import in ``__init__.py`` runs on: Celery's
    fallback app (made the way ``celery._state`` makes it), current because no other app is."""
    app = Celery("default", fixups=[], set_as_current=False)
    monkeypatch.setattr(_state, "default_app", app)
    monkeypatch.setattr(_state._tls, "current_app", None)
    assert current_app._get_current_object() is app
    yield app


def test_the_project_app_without_a_broker_is_an_error(without_broker: None) -> None:
    problems = celery_app_problems()

    assert set(problems) == {"dagger_django.E050"}
    assert "amqp://guest@localhost//" in problems["dagger_django.E050"].msg
    assert "CELERY_BROKER_URL" in problems["dagger_django.E050"].hint


def test_no_app_of_the_project_and_no_broker_is_an_error_that_says_how_to_make_the_app(
    without_broker: None, fallback_app: Celery
) -> None:
    problems = celery_app_problems()

    assert set(problems) == {"dagger_django.E050"}
    assert "no Celery app of the project is loaded" in problems["dagger_django.E050"].msg
    hint = problems["dagger_django.E050"].hint
    assert "celery.py" in hint and "__init__.py" in hint and 'namespace="CELERY"' in hint


def test_no_app_of_the_project_with_a_broker_from_the_environment_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, fallback_app: Celery
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")

    assert set(celery_app_problems()) == {"dagger_django.W050"}


def test_a_configured_broker_is_not_reported(monkeypatch: pytest.MonkeyPatch, without_broker: None) -> None:
    monkeypatch.setitem(current_app.conf, "broker_url", "redis://127.0.0.1:6379/15")
    assert celery_app_problems() == {}
    # RabbitMQ on localhost with the guest user, when it is said explicitly.
    monkeypatch.setitem(current_app.conf, "broker_url", "amqp://guest@localhost//")
    assert celery_app_problems() == {}


def test_the_ready_list_forced_on_needs_a_redis_broker(
    monkeypatch: pytest.MonkeyPatch, settings: Any, without_broker: None
) -> None:
    settings.DAGGER = {**settings.DAGGER, "READY_LIST": True}
    monkeypatch.setitem(current_app.conf, "broker_url", "amqp://guest@localhost//")
    problems = celery_app_problems()
    assert set(problems) == {"dagger_django.E051"}
    assert "READY_LIST" in problems["dagger_django.E051"].msg
    monkeypatch.setitem(current_app.conf, "broker_url", "rediss://cache.example:6380/0")
    assert celery_app_problems() == {}


def test_eager_mode_needs_no_broker(monkeypatch: pytest.MonkeyPatch, without_broker: None) -> None:
    monkeypatch.setitem(current_app.conf, "task_always_eager", True)

    assert celery_app_problems() == {}


def test_a_dispatcher_other_than_celery_needs_no_broker(settings: Any, without_broker: None) -> None:
    settings.DAGGER = {**settings.DAGGER, "DISPATCHER": "tests.test_checks.NoBrokerDispatcher"}

    assert celery_app_problems() == {}


class NoBrokerDispatcher:
    """A dispatcher that is not Celery's (what DAGGER['DISPATCHER'] may name)."""


def test_the_demo_project_is_clean_in_the_embedded_mode(tmp_path: Path) -> None:
    """``make run``'s settings: kombu's filesystem broker, no server (config/settings.py)."""
    result = manage("check", tmp_path=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert not CHECK_IDS & set(result.stdout.split() + result.stderr.split()), result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_demo_project_is_clean_with_a_redis_broker(tmp_path: Path) -> None:
    result = manage(
        "check",
        tmp_path=tmp_path,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/unused",
        DJANGO_SECRET_KEY="k" * 50,
        CELERY_BROKER_URL="redis://127.0.0.1:6379/15",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout, result.stdout + result.stderr
