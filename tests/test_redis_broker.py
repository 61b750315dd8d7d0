"""The Redis broker transport (dagger_django/adapters/redis_broker.py): a channel closes even when
Redis is gone, so a Celery worker reconnects after a Redis restart instead of exiting.

These run on a private ``redis-server`` (tests/faults/services.py): they kill it. The last one checks
the marker by which the sweeps learn that a Redis restarted empty (adapters/celery.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
from kombu import Connection, Exchange, Queue

from tests.faults.services import PrivateRedis

TRANSPORT = "dagger_django.adapters.redis_broker:Transport"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis.create(tmp_path)
    try:
        yield server
    finally:
        server.destroy()


def _consuming_with_an_unacked_message(conn: Connection) -> Any:
    """A worker's state at any moment under load: on the default channel a message delivered and
    not yet acknowledged (``acks_late``) and the next ``BRPOP`` in flight; and a channel for
    remote control (an auto-delete fanout queue, like Celery's pidbox) opened after it.

    kombu closes a connection's channels newest first and stops at the first that raises: the
    control channel's close (it deletes its fanout queue) fails on a dead Redis, so the default
    channel is left to the second ``close()``, as in a worker.
    """
    channel = conn.default_channel
    control = Queue(
        "dagger-redis-test.control", Exchange("dagger-redis-test.pidbox", type="fanout"), auto_delete=True
    )
    conn.Consumer(
        [control], channel=conn.channel(), callbacks=[lambda body, message: None], accept=["json"]
    ).consume()
    queue = Queue("dagger-redis-test")
    conn.Producer().publish({"n": 1}, routing_key=queue.name, declare=[queue])
    received: list[Any] = []
    conn.Consumer(
        queue, channel=channel, callbacks=[lambda body, message: received.append(message)], accept=["json"]
    ).consume()
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            pass
    assert len(received) == 1
    for _ in range(10):  # until nothing more comes (subscribe replies come first): a BRPOP waits
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            break
    assert channel._in_poll, "precondition: a BRPOP is in flight"
    return channel


def _lose_redis_and_close_like_celery(conn: Connection, redis: PrivateRedis) -> None:
    """What Celery 5.7's consumer does when its broker connection is lost: collect, then close."""
    redis.stop()
    conn.collect(socket_timeout=1.0)
    conn.close()


def test_channel_closes_when_redis_dies_with_a_brpop_in_flight(redis: PrivateRedis) -> None:
    conn = Connection(redis.url, transport=TRANSPORT)
    channel = _consuming_with_an_unacked_message(conn)
    _lose_redis_and_close_like_celery(conn, redis)  # raises nothing: the worker would reconnect
    assert channel.closed


def test_kombus_own_channel_fails_the_second_close_this_transport_fixes(redis: PrivateRedis) -> None:
    # Keeps the reason for the transport visible: when this stops failing (a kombu or Celery
    # release fixed it), the transport can go.
    conn = Connection(redis.url, transport="redis")
    _consuming_with_an_unacked_message(conn)
    with pytest.raises(AttributeError, match="hostname"):
        _lose_redis_and_close_like_celery(conn, redis)


def test_a_redis_broker_url_selects_this_transport_in_the_demo_project() -> None:
    from django.conf import settings

    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("the suite runs on another broker")
    assert settings.CELERY_BROKER_TRANSPORT == TRANSPORT


def test_the_dispatcher_tells_once_that_a_restarted_redis_lost_its_messages(
    redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery import Celery

    from dagger_django.adapters.celery import CeleryDispatcher

    monkeypatch.setenv("CELERY_BROKER_URL", redis.url)  # Celery prefers it to the app's broker
    app = Celery("dagger-redis-test", broker=redis.url, set_as_current=False)
    app.conf.broker_transport = TRANSPORT
    dispatcher = CeleryDispatcher(app=app)
    assert dispatcher.messages_lost() is True  # a new broker: no marker yet
    dispatcher.messages_marked()
    assert [dispatcher.messages_lost() for _ in range(3)] == [False, False, False]
    redis.stop()
    with pytest.raises(kombu.exceptions.OperationalError):  # the sweep asks again next time
        dispatcher.messages_lost()
    redis.start()  # empty: the marker is gone with every message
    assert dispatcher.messages_lost() is True
    assert dispatcher.messages_lost() is True  # until the loss is dealt with
    dispatcher.messages_marked()
    assert dispatcher.messages_lost() is False
