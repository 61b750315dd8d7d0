"""Tasks the test worker imports (``celery worker --include``) so the suite can check the worker
itself, independently of the engine."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="tests.record_group")
def record_group(name: str) -> None:
    """Write one row the test process can wait for: proves queue and database wiring."""
    from django.contrib.auth.models import Group

    Group.objects.get_or_create(name=name)
