"""The campaigns' own accounting, which their verdicts rest on: every workflow the driver committed
is in its records, even when the campaign stops it mid-create, and a campaign reads its outcome
only once every workflow in the database has finished, not once a count of them has."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagger_django import Dagger
from dagger_django.models import Workflow
from dagger_django.testing import engine_under_test
from tests.conftest import ROOT, _database_url
from tests.kafka.broker import free_port

from ..engine import builders, tasks
from .fleet import Stack
from .ledger import driver_records

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def registry() -> Iterator[None]:
    saved = dict(Dagger.template_dags)
    yield
    Dagger.template_dags.clear()
    Dagger.template_dags.update(saved)


def _database() -> str:
    from django.db import connection

    return _database_url(connection.settings_dict)


def test_the_driver_stopped_right_after_a_commit_still_records_that_workflow(tmp_path: Path) -> None:
    out = tmp_path / "created.jsonl"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.faults.settings",
        "DATABASE_URL": _database(),
        # Nobody listens there: the dispatch fails at once and is owed, as in a broker outage.
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [
        sys.executable, "-m", "tests.faults.driver", "--count", "5", "--templates", "FaultsChain",
        "--out", str(out), "--import", "tests.faults.sigterm_after_commit",
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    committed = {str(pk) for pk in Workflow.objects.values_list("id", flat=True)}
    log = f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert len(committed) == 1, log  # SIGTERM came after the first commit: no second create
    assert {r["id"] for r in driver_records(out)} == committed, log
    assert done.returncode == 0, log


def test_a_campaign_waits_for_every_workflow_in_the_database_not_for_a_count(
    tmp_path: Path, registry: Any
) -> None:
    stack = Stack(base=tmp_path, pg=None, redis=None, kafka=None, database_url=_database())  # type: ignore[arg-type]
    template = builders.linear("AccountingChain", (tasks.Record, "a"))
    with engine_under_test() as (dispatcher, _clock):
        template.create_instance(submit_task=True)
        dispatcher.drain()
        # Still running: a create the driver's records do not count (its client saw it fail).
        template.create_instance(submit_task=True)
        assert not stack.finished(1)  # one completed, as many as the records expect: not enough
        dispatcher.drain()
        assert stack.finished(2)
        assert not stack.finished(3)  # fewer workflows than expected: not all created yet
