"""The one retry-with-backoff policy (engine/retry.py): unit tests, no database."""

from __future__ import annotations

import datetime as dt

import pytest

from dagger_django import ExecutorTask
from dagger_django.engine.retry import RESEND_MAX_EXPONENT, RetryPolicy, resend_after, resend_policy
from dagger_django.exceptions import DaggerError, InvalidTaskResult


class Flaky(ExecutorTask):
    max_retries = 3
    retry_backoff = 2.0
    retry_backoff_max = 10.0
    retry_on = (ConnectionError,)


class Bare:
    """A class that declares none of the policy's attributes."""


def test_delay_doubles_per_attempt_from_the_backoff() -> None:
    policy = RetryPolicy(max_retries=10, backoff=2.0, backoff_max=1000.0)
    assert [policy.delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_delay_is_capped_by_the_max() -> None:
    policy = RetryPolicy.for_task(Flaky)
    assert [policy.delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_delay_of_a_huge_attempt_is_the_max_not_an_overflow() -> None:
    assert RetryPolicy(backoff=1.0, backoff_max=300.0).delay(100_000) == 300.0


def test_delay_below_the_first_attempt_is_the_backoff() -> None:
    policy = RetryPolicy(backoff=3.0, backoff_max=100.0)
    assert policy.delay(0) == policy.delay(-5) == policy.delay(1) == 3.0


def test_max_retries_bounds_the_attempts() -> None:
    policy = RetryPolicy.for_task(Flaky)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4, 5)] == [False, False, False, True, True]
    error = ConnectionError("down")
    assert [policy.retry_delay(error, n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, None]


def test_only_the_declared_errors_are_retried_and_never_an_engine_error() -> None:
    policy = RetryPolicy.for_task(Flaky)
    assert policy.retry_delay(ConnectionError(), 1) == 2.0
    assert policy.retry_delay(ValueError(), 1) is None
    assert policy.retry_delay(None, 1) is None
    anything = RetryPolicy(max_retries=5)
    assert anything.retry_delay(RuntimeError(), 1) == 1.0
    assert anything.retry_delay(InvalidTaskResult("bad"), 1) is None
    assert isinstance(InvalidTaskResult("bad"), DaggerError)


def test_retry_on_may_be_a_single_class_or_an_empty_tuple() -> None:
    class One(ExecutorTask):
        max_retries = 1
        retry_on = KeyError  # type: ignore[assignment]

    class Never(ExecutorTask):
        max_retries = 1
        retry_on = ()

    assert RetryPolicy.for_task(One).retry_delay(KeyError("k"), 1) == 1.0
    assert RetryPolicy.for_task(One).retry_delay(ValueError(), 1) is None
    assert RetryPolicy.for_task(Never).retry_delay(RuntimeError(), 1) is None


def test_a_class_without_the_attributes_gets_the_defaults_of_itask() -> None:
    bare = RetryPolicy.for_task(Bare)
    assert bare == RetryPolicy.for_task(ExecutorTask)
    assert (bare.max_retries, bare.backoff, bare.backoff_max) == (0, 1.0, 300.0)
    assert bare.exhausted(1)
    assert bare.retry_delay(RuntimeError(), 1) is None


def test_max_retries_none_is_never_exhausted() -> None:
    class Zero(ExecutorTask):
        max_retries = None  # type: ignore[assignment]

    assert RetryPolicy.for_task(Zero).max_retries == 0  # a class's None means no retry, as before
    assert not RetryPolicy(max_retries=None).exhausted(10**9)


@pytest.mark.parametrize("lease", [30.0, 0.5])
def test_resends_wait_one_lease_doubled_up_to_eight(lease: float) -> None:
    waits = [resend_after(n, lease) for n in range(0, 7)]
    assert waits == [dt.timedelta(seconds=lease * k) for k in (1, 1, 2, 4, 8, 8, 8)]
    assert resend_policy(lease).backoff_max == lease * 2**RESEND_MAX_EXPONENT
    assert not resend_policy(lease).exhausted(1000)
