"""The pages benchmark's own code path (``python -m benchmarks.pages``, docs/benchmarks.md), run
at its quick size on the test database: it seeds, requests every page and reports timings, query
counts and the slowest query of each. The numbers are the benchmark's business, not asserted."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import pages
from dagger_django.models import Status, Subscription, Timer, Workflow

# Transactional: the prototypes run through the engine, whose dispatch happens after commit.
pytestmark = pytest.mark.django_db(transaction=True)

QUICK = 20_000


def test_pages_benchmark_seeds_and_times_every_page_at_its_quick_size(capsys: Any) -> None:
    report = pages.run(QUICK, requests=2, chunk=10_000)

    seeded = report["seed"]
    assert seeded["workflows"] == QUICK
    assert Workflow.objects.count() == QUICK + pages.PROTOTYPES
    # Every status the pages show, and the rows that come with them.
    assert set(Workflow.objects.values_list("status", flat=True).distinct()) == {
        Status.COMPLETED, Status.EXECUTING, Status.FAILURE, Status.STOPPED, Status.NOT_STARTED,
    }  # fmt: skip
    assert Subscription.objects.exists() and Timer.objects.exists()
    assert Workflow.objects.filter(pk=pages.wf_id(QUICK)).exists()

    measured = report["pages"]
    assert {"admin list", "admin list, stuck 1 h", "admin workflow page", "API list", "API history"} <= set(
        measured
    )
    for label, row in measured.items():
        assert row["requests"] == 2, label
        assert row["median_ms"] > 0 and row["p95_ms"] >= row["median_ms"], label
        assert row["queries"] > 0, label
        assert row["slowest_sql"]["sql"], label

    pages._print(report)
    assert "admin workflow page" in capsys.readouterr().out
