"""Nodes handed to workers through a list in Redis, announced by one Celery message per batch.

A workflow submitted by a client (or a node made ready one at a time anywhere) used to cost a
Celery message of its own: its publish in the client, its receipt, bookkeeping and
acknowledgement in the worker's main process (kombu's Redis transport does a round trip or two
per message), and a task run in a pool process. For a 3-step workflow that was more CPU than the
engine's own work (docs/benchmarks.md, "A ready list instead of a message per submit").

Here the client appends ``"<workflow id>:<node id>"`` to a Redis list and rings a bell: a key
set only if it is absent, and when it was absent, one ``dagger_django.run_ready`` message. The
task (:func:`take`) clears the bell, moves a batch from the list into a list of its own (named
after its task id) and rings again if work is left, so that a free pool process helps; then it
runs its batch as a ``run_nodes`` message would (``services.nodes_run``: the batch's transitions
share transactions). Under a backlog one message carries up to ``DISPATCH_BATCH`` nodes; an idle
system pays two Redis round trips more than a plain message.

Nothing is lost on the way, and nothing runs twice:

- The list is not where the truth is: the node is committed SUBMITTED before it is appended, and a
  node lost from Redis (Redis restarted empty, the list deleted) is handed out again by the recovery
  sweep after its lease, as a lost message is (``engine/recovery.py``).
- A batch taken stays in its task's own list until the task has run it, and a task that comes back
  (Celery redelivers it after its pool process was killed, or retries it after a database outage or
  a held lease: the same task id) runs the same batch with the same leases, as a redelivered
  ``run_nodes`` message does. The task's list expires after :data:`TAKEN_TTL`.
- A bell whose message was lost (a purged queue) expires after :data:`BELL_MS`; the next append,
  or the recovery sweep (:func:`wake`), rings again.
- A node appended twice (a re-send) runs once: the second finds it claimed.

Used where the Celery broker is Redis (``redis://``, ``rediss://``), unless ``DAGGER["READY_LIST"]``
is ``False``; elsewhere (RabbitMQ, the embedded file broker) each submit sends its own message.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

from ..conf import dagger_settings

logger = logging.getLogger("dagger_django.worker")

#: How long a bell lasts without its message being run, in milliseconds: a message lost (a purged
#: queue) delays the list's work at most this long once something else is appended.
BELL_MS = 10_000
#: How long a task's taken batch is kept for the task to come back (a redelivery, a retry), in
#: seconds. After it, a retry takes a new batch and the old one is the recovery sweep's.
TAKEN_TTL = 24 * 3600
#: Seconds a Redis call may take before it counts as failed (the send is then owed: recovery).
SOCKET_TIMEOUT = 2.0

# Clears the bell (KEYS[3]), then moves a batch from the ready list into the task's own list, or
# gives back the batch the task already holds (a redelivered or retried task). A task takes half
# of what waits, at most ARGV[1] nodes: a backlog is shared between the pool processes that are
# free instead of one taking it all. Returns {nodes left waiting, the batch}.
_TAKE = """
redis.call('DEL', KEYS[3])
local held = redis.call('LRANGE', KEYS[2], 0, -1)
local waiting = redis.call('LLEN', KEYS[1])
if #held > 0 then
    return {waiting, held}
end
if waiting == 0 then
    return {0, {}}
end
local count = math.min(tonumber(ARGV[1]), math.max(1, math.ceil(waiting / 2)))
local batch = redis.call('LPOP', KEYS[1], count)
redis.call('RPUSH', KEYS[2], unpack(batch))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
return {waiting - count, batch}
"""

_local = threading.local()


def enabled() -> bool:
    """Whether submits go through the ready list: ``DAGGER["READY_LIST"]``, or (None, the default)
    whether the Celery broker is Redis."""
    setting = dagger_settings.READY_LIST
    if setting is not None:
        return bool(setting)
    return _broker_url().split("://", 1)[0] in ("redis", "rediss")


def _app() -> Any:
    from ..tasks import run_node

    return run_node.app


def _broker_url() -> str:
    """Where sends go: Celery's write URL when it has one, else the broker URL."""
    conf = _app().conf
    return str(conf.get("broker_write_url") or conf.broker_url or "")


def _client() -> Any:
    """This process's (and thread's) Redis client for the broker's database; a forked pool process
    makes its own (a connection must not be shared across a fork)."""
    url = _broker_url()
    client = getattr(_local, "client", None)
    if client is None or _local.made_for != (os.getpid(), url):
        import redis

        client = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
        )
        _local.client, _local.made_for = client, (os.getpid(), url)
        _local.take = client.register_script(_TAKE)  # sent by its digest (EVALSHA) after the first
    return client


def _keys(task_id: str | None = None) -> tuple[str, str, str]:
    """The ready list, its bell and ``task_id``'s own list, named after the queue the bell's
    messages go to (projects and test runs sharing a Redis database keep apart as their queues
    do). The braces keep them in one slot of a Redis cluster (the take script touches all three)."""
    queue = dagger_settings.CELERY_QUEUE or _app().conf.task_default_queue or "celery"
    base = f"dagger:{{{queue}}}"
    return f"{base}:ready", f"{base}:bell", f"{base}:taken:{task_id or ''}"


def _encode(workflow_id: Any, node_id: Any) -> str:
    return f"{workflow_id}:{node_id}"


def decode(item: bytes | str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """``(workflow id, node id)`` of a list entry; None for an entry that is not one (logged)."""
    text = item.decode() if isinstance(item, bytes) else item
    try:
        workflow_id, node_id = text.split(":")
        return uuid.UUID(workflow_id), uuid.UUID(node_id)
    except ValueError:
        logger.warning("ready list: ignoring a malformed entry %r", text[:200])
        return None


def append(targets: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """Append nodes to the ready list and ring the bell if it is silent: one round trip, and one
    Celery message when the bell was silent. Raises when Redis or the broker cannot be reached
    (after ringing failed the bell is cleared again, so that the next append rings)."""
    if not targets:
        return
    ready, bell, _ = _keys()
    pipe = _client().pipeline(transaction=False)
    pipe.rpush(ready, *[_encode(w, n) for w, n in targets])
    pipe.set(bell, b"1", nx=True, px=BELL_MS)
    _, rang = pipe.execute()
    if rang:
        _send(bell)


def ring() -> bool:
    """Ring the bell if it is silent (one Celery message). Returns whether a message was sent."""
    _, bell, _ = _keys()
    if not _client().set(bell, b"1", nx=True, px=BELL_MS):
        return False
    _send(bell)
    return True


def _send(bell: str) -> None:
    from ..tasks import run_ready
    from .celery import CeleryDispatcher

    try:
        run_ready.apply_async(**CeleryDispatcher.options())
    except BaseException:
        try:
            _client().delete(bell)
        except Exception:  # noqa: BLE001 - the bell expires after BELL_MS anyway
            pass
        raise


def take(task_id: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """The batch of the task ``task_id``: the one it took before (it came back), or a new one moved
    from the ready list. Clears the bell first, and rings it again when nodes are left waiting."""
    ready, bell, taken = _keys(task_id)
    client = _client()
    waiting, batch = _local.take(
        keys=[ready, taken, bell],
        args=[max(1, int(dagger_settings.DISPATCH_BATCH)), TAKEN_TTL],
        client=client,
    )
    if int(waiting) > 0:
        try:
            ring()
        except Exception as exc:  # noqa: BLE001 - this batch still runs; the rest is announced later
            # By the next append once the bell expires, or by the recovery sweep (wake).
            logger.warning("ready list: could not announce %s waiting node(s) (%r)", waiting, exc)
    return [target for target in (decode(item) for item in batch) if target is not None]


def done(task_id: str) -> None:
    """The task ``task_id`` ran its batch: forget it."""
    _client().delete(_keys(task_id)[2])


def wake() -> bool:
    """Ring the bell if nodes wait in the ready list and it is silent (the recovery sweep asks, for
    a list whose message was lost). Returns whether it rang."""
    ready, _, _ = _keys()
    if not _client().llen(ready):
        return False
    return ring()


def waiting() -> int:
    """How many nodes wait in the ready list."""
    return int(_client().llen(_keys()[0]))
