"""Tasks the test worker imports (``celery worker --include``) so the suite can check the worker
itself, independently of the engine."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="tests.record_group")
def record_group(name: str) -> None:
    """Write one row the test process can wait for: proves queue and database wiring."""
    from django.contrib.auth.models import Group

    Group.objects.get_or_create(name=name)


# The worker's spans go to the file the suite reads (tests/tracing.py).
from tests.tracing import export_to_file  # noqa: E402

export_to_file()
