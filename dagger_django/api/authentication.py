"""Basic authentication that slows down password guessing (docs/api.md#authentication).

DRF's throttles run after authentication, and a wrong password ends the request during
authentication: with plain ``BasicAuthentication`` nothing ever counts failed attempts. This
class counts them per client address (DRF's ``get_ident``, which honours ``NUM_PROXIES``) and,
past the ``login_failure`` rate of ``DEFAULT_THROTTLE_RATES`` (e.g. ``"10/minute"``), answers
429 to that address's basic-auth attempts until the window has passed, right password or not.
Without a ``login_failure`` rate nothing is counted. The counts live in Django's default cache:
with several server processes, use a shared cache (Redis) so that they add up.
"""

from __future__ import annotations

from typing import Any

from django.db import DataError
from rest_framework.authentication import BasicAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class LoginFailureThrottle(SimpleRateThrottle):
    """Failed logins per client address; recorded only on a failure, checked before each try."""

    scope = "login_failure"

    def get_rate(self) -> str | None:
        # Read when used (not when DRF's module was imported), and optional.
        rate: str | None = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        return rate

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def _recent(self, request: Request) -> tuple[str | None, list[float]]:
        if self.rate is None:
            return None, []
        key = self.get_cache_key(request, None)
        self.now = self.timer()
        history = [stamp for stamp in self.cache.get(key, []) if stamp > self.now - self.duration]
        return key, history

    def wait_if_blocked(self, request: Request) -> float | None:
        """Seconds this address must wait before trying again, or None if it may try now."""
        key, history = self._recent(request)
        if key is None or len(history) < self.num_requests:
            return None
        self.history = history
        return self.wait()

    def record_failure(self, request: Request) -> None:
        key, history = self._recent(request)
        if key is not None:
            self.cache.set(key, [self.now, *history], self.duration)


class ThrottledBasicAuthentication(BasicAuthentication):
    """``BasicAuthentication`` answering 429 to an address after too many wrong passwords."""

    def authenticate(self, request: Request) -> Any:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != b"basic":
            return None
        throttle = LoginFailureThrottle()
        wait = throttle.wait_if_blocked(request)
        if wait is not None:
            raise Throttled(wait, detail="Too many failed logins from this address.")
        try:
            return super().authenticate(request)
        except DataError as exc:
            # A user name PostgreSQL cannot hold (a NUL character) belongs to no one: a wrong login.
            throttle.record_failure(request)
            raise AuthenticationFailed("Invalid username/password.") from exc
        except AuthenticationFailed:
            throttle.record_failure(request)
            raise


def perform_authentication(request: Request) -> None:
    """DRF's ``APIView.perform_authentication``, where a credential the database cannot hold
    (a NUL character in a session cookie, a token or a basic-auth user name: PostgreSQL refuses
    it in a query) is a wrong credential, answered like one (401/403), not a 400 about the
    request's data. The request goes on as anonymous (DRF's own "no credentials" state), so that
    nothing that renders the error (the browsable API's page authenticates again) asks the
    database about that credential again: that was a 500."""
    try:
        request.user  # noqa: B018 (authenticates)
    except DataError as exc:
        request._not_authenticated()
        raise AuthenticationFailed("Invalid credentials.") from exc


__all__ = ["LoginFailureThrottle", "ThrottledBasicAuthentication", "perform_authentication"]
