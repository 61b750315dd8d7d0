"""One mapping from exceptions to the API's error body: ``{"error": <code>, "detail": <text>}``.

Every error response of the API goes through :func:`exception_handler`. A :class:`DaggerError`
carries its own ``code`` and ``http_status``; DRF's and Django's request errors get a fixed code
each. Anything else is a bug and is left to Django (a 500), never disguised as bad input.

The views use it through :class:`dagger_django.api.views.DaggerAPIView`, so the API answers the
same way whatever ``REST_FRAMEWORK["EXCEPTION_HANDLER"]`` the project has configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DataError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from ..exceptions import DaggerError

#: Codes of DRF's request errors. The first matching class wins, so subclasses come first.
_API_CODES: tuple[tuple[type[exceptions.APIException], str], ...] = (
    (exceptions.ValidationError, "invalid"),
    (exceptions.ParseError, "malformed_json"),
    (exceptions.NotAuthenticated, "not_authenticated"),
    (exceptions.AuthenticationFailed, "not_authenticated"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.Throttled, "throttled"),
)


def error_response(
    code: str,
    detail: str,
    http_status: int,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """The API's error body. ``extra`` adds keys (e.g. ``fields`` of a validation error)."""
    body: dict[str, Any] = {"error": code, "detail": detail, **extra}
    return Response(body, status=http_status, headers=dict(headers or {}))


def exception_handler(exc: Exception, context: Mapping[str, Any] | None = None) -> Response | None:
    """Turn ``exc`` into an error response, or return None for an unexpected error (a 500).

    The signature is DRF's ``EXCEPTION_HANDLER``, so a project may also install it globally.
    """
    if isinstance(exc, DaggerError):
        set_rollback()
        detail = str(exc) or (type(exc).__doc__ or type(exc).__name__).strip().splitlines()[0]
        fields = getattr(exc, "fields", None)
        if fields:
            return error_response(exc.code, detail, exc.http_status, fields=dict(fields))
        return error_response(exc.code, detail, exc.http_status)

    if isinstance(exc, RequestDataTooBig):
        return error_response("request_too_large", str(exc), status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)

    if isinstance(exc, DataError):
        # The database refused a value the request carried (e.g. a NUL character in a JSON
        # string, which PostgreSQL's jsonb cannot store). The transaction was rolled back.
        set_rollback()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return error_response(
            "invalid_data", f"The database cannot store a value of this request: {reason}", 400
        )

    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)

    if not isinstance(exc, exceptions.APIException):
        return None

    set_rollback()
    headers: dict[str, str] = {}
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = f"{int(wait)}"

    code = next((c for cls, c in _API_CODES if isinstance(exc, cls)), None)
    if code is None:
        code = str(getattr(exc, "default_code", "") or "error")

    if isinstance(exc, exceptions.ValidationError):
        return error_response(
            code,
            _validation_summary(exc.detail),
            exc.status_code,
            headers=headers,
            fields=exc.detail if isinstance(exc.detail, Mapping) else {"non_field_errors": exc.detail},
        )
    return error_response(code, _text(exc.detail), exc.status_code, headers=headers)


def _text(detail: Any) -> str:
    if isinstance(detail, Mapping):
        return "; ".join(f"{key}: {_text(value)}" for key, value in detail.items())
    if isinstance(detail, list | tuple):
        return " ".join(_text(item) for item in detail)
    return str(detail)


def _validation_summary(detail: Any) -> str:
    """A readable one-line message naming every invalid field: ``Invalid input: id: Must be ...``."""
    if isinstance(detail, Mapping):
        parts = [
            _text(value) if key == "non_field_errors" else f"{key}: {_text(value)}"
            for key, value in detail.items()
        ]
        return "Invalid input: " + "; ".join(parts) if parts else "Invalid input."
    return "Invalid input: " + _text(detail)


__all__ = ["error_response", "exception_handler"]
