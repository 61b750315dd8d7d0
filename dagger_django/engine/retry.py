"""The one retry-with-backoff policy of the engine: how long to wait before try ``n`` again, and
whether there may be one.

The wait before retry ``attempt`` (1 for the first retry) is ``backoff * 2**(attempt - 1)``,
never more than ``backoff_max``; an ``attempt`` below 1 waits ``backoff``. Its users:

- a hook that raised (``services._fail_or_retry``, a node) and an ``on_message`` that raised
  (``messages._retry_due``, a delivery): :meth:`RetryPolicy.for_task` reads the task class's
  ``max_retries``, ``retry_backoff``, ``retry_backoff_max`` and ``retry_on``
  (``definitions.tasks.ITask``), with the same defaults for a class that lacks them;
- the re-sends of work still waiting for its message (``recovery`` for nodes and stop hooks,
  ``messages.deliveries_redispatch`` for deliveries): :func:`resend_after`, one lease doubled
  up to eight leases, with no limit on their number;
- the outbox relay's produce retries (``outbox.retry_delay``), from the ``OUTBOX_RETRY_*``
  settings (its attempt limit, ``OUTBOX_MAX_ATTEMPTS``, is counted by the relay itself).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..exceptions import DaggerError

#: Doubling stops there: 2**60 times any useful ``backoff`` is already past any ``backoff_max``,
#: and a float cannot take much more (a retry count gone wild must not raise OverflowError).
_MAX_EXPONENT = 60

#: A re-send waits one lease, then doubles up to ``2**RESEND_MAX_EXPONENT`` leases (1, 2, 4, 8).
RESEND_MAX_EXPONENT = 3


@dataclass(frozen=True)
class RetryPolicy:
    """Retry up to ``max_retries`` times (``None``: no limit) the errors that are instances of
    ``retry_on`` (never a ``DaggerError``: the engine's own errors are deterministic), waiting
    ``backoff`` seconds doubled per attempt, at most ``backoff_max``."""

    max_retries: int | None = 0
    backoff: float = 1.0
    backoff_max: float = 300.0
    #: What ``isinstance`` takes: a class or a tuple of them (an empty tuple retries nothing).
    retry_on: Any = (Exception,)

    @classmethod
    def for_task(cls, task_cls: type[Any]) -> RetryPolicy:
        """The policy a task class declares; a class without the attributes gets the defaults of
        ``ITask`` (no retry, 1 s doubled, at most 300 s, any ``Exception``)."""
        return cls(
            max_retries=int(getattr(task_cls, "max_retries", 0) or 0),
            backoff=float(getattr(task_cls, "retry_backoff", 1.0)),
            backoff_max=float(getattr(task_cls, "retry_backoff_max", 300.0)),
            retry_on=getattr(task_cls, "retry_on", (Exception,)),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (1 for the first retry)."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        return max(0.0, min(self.backoff * 2**exponent, self.backoff_max))

    def exhausted(self, attempt: int) -> bool:
        """Whether retry ``attempt`` is one too many (``attempt > max_retries``)."""
        return self.max_retries is not None and attempt > self.max_retries

    def retryable(self, error: BaseException | None) -> bool:
        """Whether ``error`` is of a kind this policy retries (``None``, no error: no)."""
        return not isinstance(error, DaggerError) and isinstance(error, self.retry_on)

    def retry_delay(self, error: BaseException | None, attempt: int) -> float | None:
        """Seconds before retry ``attempt`` of a hook that raised ``error``; ``None``: no retry."""
        if not self.retryable(error) or self.exhausted(attempt):
            return None
        return self.delay(attempt)


def resend_policy(lease: float) -> RetryPolicy:
    """The backoff of re-sending work whose message may be lost or stuck behind a backlog: one
    lease, doubled per re-send, up to ``2**RESEND_MAX_EXPONENT`` leases; never exhausted."""
    return RetryPolicy(max_retries=None, backoff=lease, backoff_max=lease * 2**RESEND_MAX_EXPONENT)


def resend_after(redispatches: int, lease: float) -> dt.timedelta:
    """The wait before the next re-send of a node, stop hook or delivery sent ``redispatches``
    times already: after 1, 2, 4 then 8 leases at most."""
    return dt.timedelta(seconds=resend_policy(lease).delay(redispatches))
