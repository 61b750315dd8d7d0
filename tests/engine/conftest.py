from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dagger_django.models import Workflow
from dagger_django.testing import FrozenClock, InMemoryDispatcher, engine_under_test


@pytest.fixture
def engine(transactional_db: Any) -> Iterator[tuple[InMemoryDispatcher, FrozenClock]]:
    """The real engine on the real database, with an in-memory dispatcher and a frozen clock.

    Transactional: on_commit callbacks (the dispatch) only run after a real commit.
    """
    with engine_under_test() as pair:
        yield pair


@pytest.fixture
def dispatcher(engine: tuple[InMemoryDispatcher, FrozenClock]) -> InMemoryDispatcher:
    return engine[0]


@pytest.fixture
def clock(engine: tuple[InMemoryDispatcher, FrozenClock]) -> FrozenClock:
    return engine[1]


def statuses(workflow_id: Any) -> dict[str, str]:
    """{short node name: status} of a workflow."""
    from dagger_django.engine.state import nodes_read

    return {n.name.rsplit(".", 1)[-1]: n.status for n in nodes_read(workflow_id)}


def reload(workflow_id: Any) -> Workflow:
    return Workflow.objects.get(pk=workflow_id)


# -- migration tests (test_history_migration.py, test_node_state_migration.py) ----------------------
def migrate(target: tuple[str, str]) -> Any:
    """Migrate the test database to ``target``; the historical models there."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([target])
    return executor.loader.project_state([target]).apps


def migrate_to_latest() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def restore_latest_schema() -> None:
    """Back to the latest schema whatever the test left. Should the migration itself fail on what
    the test wrote, the workflows go (the test database is emptied after this test anyway)."""
    from django.db import connection

    try:
        migrate_to_latest()
    except Exception:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE dagger_django_workflow CASCADE")
        migrate_to_latest()
        raise


def concurrent_sweeps(count: int, *, timeout: float = 60) -> list[int]:
    """Run ``count`` timer sweeps at once, in threads (each its own connection); returns how
    many timers each fired. A sweep that raises fails the caller."""
    import threading

    from django.db import connections

    from dagger_django.engine.timers import timers_fire_due

    start = threading.Barrier(count)
    counts: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            start.wait(timeout=10)
            counts.append(timers_fire_due())
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sweep) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert errors == []
    return counts
