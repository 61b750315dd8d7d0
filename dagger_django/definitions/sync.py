"""Sync engine calls made from async code: a clear error naming the ``a``-twin to await."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from ..exceptions import SyncCallInAsyncContext

F = TypeVar("F", bound=Callable[..., Any])


def sync_only(twin: str) -> Callable[[F], F]:
    """Turn Django's ``SynchronousOnlyOperation`` (a sync engine call made from async code) into
    :class:`SyncCallInAsyncContext` naming the ``a``-twin to await instead."""

    def decorator(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                from django.core.exceptions import SynchronousOnlyOperation

                if not isinstance(exc, SynchronousOnlyOperation):
                    raise
                raise SyncCallInAsyncContext(
                    f"{function.__qualname__}() is synchronous and was called from async code: "
                    f"use `await {twin}(...)` there."
                ) from exc

        return wrapper  # type: ignore[return-value]

    return decorator


__all__ = ["sync_only"]
