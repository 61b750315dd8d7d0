"""The dispatcher port on Celery: ids in the message, nothing else."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ..conf import dagger_settings

#: How a send retries when the broker does not answer: briefly, so that a request that committed
#: a change waits well under a second before the work is left to recovery (Celery's own default
#: would retry 3 times for up to 3 s). Connecting to a host that drops packets also waits for
#: Celery's ``broker_connection_timeout`` per attempt: keep it short where requests dispatch.
RETRY_POLICY: dict[str, float] = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.2,
    "interval_max": 0.3,
}


#: A queue no worker consumes, holding one message: when the broker loses the messages it holds
#: (a Redis without persistence restarted), this one goes with them (:meth:`CeleryDispatcher.messages_lost`).
MARKER_QUEUE = "dagger.broker-marker"


class CeleryDispatcher:
    """Sends dagger's thin Celery tasks. Called from ``on_commit`` callbacks only.

    A send that still fails after :data:`RETRY_POLICY` raises; the engine records the work as owed.
    ``app``: the Celery app whose broker :meth:`messages_lost` asks (default: the tasks' app).
    """

    def __init__(self, app: Any = None) -> None:
        self.app = app

    @staticmethod
    def options() -> dict[str, Any]:
        """Send options of dagger's per-node messages: the queue and the brief retries."""
        queue = dagger_settings.CELERY_QUEUE
        options: dict[str, Any] = {"retry": True, "retry_policy": RETRY_POLICY}
        if queue:
            options["queue"] = queue
        return options

    def run_node(self, *, workflow_id: uuid.UUID, node_id: uuid.UUID) -> None:
        """One node: appended to the ready list where the broker is Redis (adapters/ready.py),
        else a ``run_node`` message of its own. A node handed out inside a traced span (an HTTP
        request that submits, with OpenTelemetry configured) also gets a message of its own,
        which carries the trace to the worker's span."""
        from ..observability import tracing
        from ..tasks import run_node
        from . import ready

        if ready.enabled() and not tracing.active():
            ready.append([(workflow_id, node_id)])
            return
        run_node.apply_async(args=[str(workflow_id), str(node_id)], **self.options())

    def run_nodes(self, *, targets: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """Celery messages of at most ``DISPATCH_BATCH`` nodes (a bridge batch of 500 deliveries
        costs 10 publishes instead of 500), as even as can be (60 nodes: two of 30, not 50 and
        10, so two workers share them); a batch of one is a plain ``run_node``."""
        from ..tasks import run_node, run_nodes

        if not targets:
            return
        size = max(1, int(dagger_settings.DISPATCH_BATCH))
        count = -(-len(targets) // size)  # messages needed
        size = -(-len(targets) // max(1, count))  # nodes per message, evened out
        options = self.options()
        for start in range(0, len(targets), size):
            chunk = targets[start : start + size]
            if len(chunk) == 1:
                run_node.apply_async(args=[str(chunk[0][0]), str(chunk[0][1])], **options)
            else:
                run_nodes.apply_async(args=[[[str(w), str(n)] for w, n in chunk]], **options)

    def fire_timer(self, *, timer_id: int, eta: dt.datetime) -> None:
        from ..engine import ports
        from ..tasks import fire_timer

        countdown = max(0.0, (eta - ports.now()).total_seconds())
        # Only near timers are sent with a countdown: brokers hold far ones badly (Redis
        # re-delivers countdown messages after its visibility timeout). The sweep fires the rest,
        # and sends those due before the next sweep (timers.timers_dispatch_upcoming).
        if countdown <= max(float(dagger_settings.TRIGGER_INTERVAL), 1.0) * 2:
            fire_timer.apply_async(args=[timer_id], countdown=countdown, **timer_options())

    def sweep_timers(self, *, eta: dt.datetime, count: int = 1) -> None:
        from ..engine import ports
        from ..tasks import sweep_timers

        countdown = max(0.0, (eta - ports.now()).total_seconds())
        for _ in range(count):
            # A precision sweep fires what is due and does not look ahead (the beat's sweep does).
            sweep_timers.apply_async(kwargs={"upcoming": False}, countdown=countdown, **timer_options())

    def run_stop_hooks(self, *, workflow_id: uuid.UUID, node_ids: list[uuid.UUID]) -> None:
        from ..tasks import run_stop_hooks

        run_stop_hooks.apply_async(args=[str(workflow_id), [str(i) for i in node_ids]], **self.options())

    def ready_wake(self) -> bool:
        """Ring the ready list's bell if nodes wait there unannounced (its message was lost); the
        recovery sweep asks. Returns whether it rang. Raises when Redis cannot be reached."""
        from . import ready

        return ready.enabled() and ready.wake()

    def messages_lost(self) -> bool:
        """Whether the broker lost the messages it held: the marker message of :data:`MARKER_QUEUE`
        (put by :meth:`messages_marked`) is gone. The marker is durable and persistent like Celery's
        task messages, so it is lost exactly when they can be; a new broker has none either, which
        costs nothing (nothing waits yet). Raises when the broker cannot be reached.
        """
        with self._connection() as connection:
            _, count, _ = connection.default_channel.queue_declare(
                queue=MARKER_QUEUE, durable=True, auto_delete=False
            )
        return not count

    def messages_marked(self) -> None:
        """Put the marker message (the engine has dealt with the loss :meth:`messages_lost` found)."""
        with self._connection() as connection:
            connection.Producer(connection.default_channel).publish(
                {"marker": "the broker holds the messages sent before this one"},
                exchange="",
                routing_key=MARKER_QUEUE,
                serializer="json",
                delivery_mode=2,
            )

    def _connection(self) -> Any:
        """A broker connection, connected with one attempt: a sweep must not wait for a broker that is
        down (kombu would retry for seconds); it asks again at its next run."""
        from ..tasks import run_node

        app = self.app if self.app is not None else run_node.app
        connection = app.connection_for_write()
        try:
            connection.ensure_connection(max_retries=0)
        except BaseException:
            connection.release()
            raise
        return connection


def timer_options() -> dict[str, Any]:
    """Where timer work goes: ``DAGGER['TIMER_QUEUE']``, else ``DAGGER['CELERY_QUEUE']``.

    A queue of their own keeps timers on time while the main queue has a backlog.
    """
    queue = dagger_settings.TIMER_QUEUE or dagger_settings.CELERY_QUEUE
    options: dict[str, Any] = {"retry": True, "retry_policy": RETRY_POLICY}
    if queue:
        options["queue"] = queue
    return options
