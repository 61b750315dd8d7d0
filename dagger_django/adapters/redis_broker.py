"""kombu's Redis transport with a channel that always closes, even when Redis is gone.

A Celery worker waits for its queues with a ``BRPOP`` that is always in flight. When Redis goes
away (a restart, a failover, a dropped connection), kombu's Redis channel ``close()`` first reads
the reply of that pending ``BRPOP`` from the dead connection: the read raises a connection error,
and the channel stays open, half torn down. Celery 5.7.0 then closes the worker's connection a
second time after dropping its transport (``Consumer.on_connection_error_after_connected``: first
``collect()``, then ``close()``): the second ``close()`` of the same channel tries to put the
worker's unacknowledged messages back through a Redis client it can no longer build
(``AttributeError: 'NoneType' object has no attribute 'hostname'``), which is not a connection
error, and the worker stops with "Unrecoverable error". Whether it happens depends on which of
the worker's sockets reports the loss first; with tasks in flight it is nearly every time.

Here a pending ``BRPOP`` whose connection is dead is given up (there is no reply left to read:
its message, if any, was never delivered and stays in Redis, or is gone with a flushed Redis), so
the first ``close()`` completes, the second is a no-op, and the worker reconnects as Celery
intends. Use it with ``CELERY_BROKER_TRANSPORT = "dagger_django.adapters.redis_broker:Transport"``
(docs/deployment.md); the broker URL stays ``redis://…``.
"""

from __future__ import annotations

from queue import Empty

from kombu.transport import redis


class Channel(redis.Channel):
    def close(self) -> None:
        if self._in_poll and not self.closed:
            try:
                self._brpop_read()
            except Empty:
                pass  # no message was waiting: the usual case
            except self.connection_errors:
                # _brpop_read disconnected the dead connection and cleared ``_in_poll``.
                pass
        super().close()


class Transport(redis.Transport):
    Channel = Channel
