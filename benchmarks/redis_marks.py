"""Completion marks for the bare Celery chain (it has no database): one Redis list per run."""

from __future__ import annotations

import os

import redis

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    return _client


def mark_done(run: str, started: float, finished: float) -> None:
    client().rpush(f"bench:{run}", f"{started} {finished}")


def marks(run: str) -> list[tuple[float, float]]:
    out = []
    for raw in client().lrange(f"bench:{run}", 0, -1):
        a, b = raw.decode().split()
        out.append((float(a), float(b)))
    return out


def count(run: str) -> int:
    return int(client().llen(f"bench:{run}"))
