"""dagger's Celery tasks: ids in, one engine call, the retry/ack policy out.

All are ``acks_late`` with ``reject_on_worker_lost``: a worker that dies mid-task leaves the
message to be delivered again, and the engine's guards make the second delivery safe.
Database outages are retried with backoff instead of losing the message.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .engine import services

_COMMON: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": None,
}


@shared_task(name="dagger_django.run_node", bind=True, **_COMMON)
def run_node(self: Any, workflow_id: str, node_id: str) -> int:
    return services.node_run(workflow_id=workflow_id, node_id=node_id, lease=self.request.id or "")


@shared_task(name="dagger_django.fire_timer", **_COMMON)
def fire_timer(timer_id: int) -> bool:
    return services.timer_fire(timer_id=timer_id)


@shared_task(name="dagger_django.run_stop_hooks", **_COMMON)
def run_stop_hooks(workflow_id: str, node_ids: list[str]) -> int:
    return services.stop_hooks_run(workflow_id=workflow_id, node_ids=node_ids)


__all__ = ["run_node", "fire_timer", "run_stop_hooks"]
