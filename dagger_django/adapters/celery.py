"""The dispatcher port on Celery: ids in the message, nothing else."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ..conf import dagger_settings


class CeleryDispatcher:
    """Sends dagger's thin Celery tasks. Called from ``on_commit`` callbacks only."""

    def _options(self) -> dict[str, Any]:
        queue = dagger_settings.CELERY_QUEUE
        return {"queue": queue} if queue else {}

    def run_node(self, *, workflow_id: uuid.UUID, node_id: uuid.UUID) -> None:
        from ..tasks import run_node

        run_node.apply_async(args=[str(workflow_id), str(node_id)], **self._options())

    def fire_timer(self, *, timer_id: int, eta: dt.datetime) -> None:
        from ..engine import ports
        from ..tasks import fire_timer

        countdown = max(0.0, (eta - ports.now()).total_seconds())
        # Only near timers are sent with a countdown: brokers hold far ones badly (Redis
        # re-delivers countdown messages after its visibility timeout). The sweep fires the rest.
        if countdown <= max(float(dagger_settings.TRIGGER_INTERVAL), 1.0) * 2:
            fire_timer.apply_async(args=[timer_id], countdown=countdown, **self._options())

    def run_stop_hooks(self, *, workflow_id: uuid.UUID, node_ids: list[uuid.UUID]) -> None:
        from ..tasks import run_stop_hooks

        run_stop_hooks.apply_async(args=[str(workflow_id), [str(i) for i in node_ids]], **self._options())
