"""Calling user code: sync or async hooks, outside any lock, with a stable idempotency key."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from typing import Any

_local = threading.local()


def call_hook(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a task hook that may be ``def`` or ``async def`` and return its result.

    Coroutines run on an event loop kept per thread (creating a loop per call would cost more
    than most hooks). Called from a thread that already runs a loop (async code), the
    coroutine runs on a private loop in a helper thread instead.
    """
    result = fn(*args, **kwargs)
    if not inspect.isawaitable(result):
        return result
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _thread_loop().run_until_complete(_await(result))
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(_await(result))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    # The helper thread runs in a copy of this context, so context variables (the outbox's
    # collector of Topic.send calls) reach the hook.
    t = threading.Thread(target=contextvars.copy_context().run, args=(runner,))
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop
