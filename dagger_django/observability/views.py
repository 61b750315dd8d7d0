"""The metrics endpoint (the demo project mounts it at ``/metrics``; docs/observability.md).

Who may read it: a staff user (session), or a scraper that sends
``Authorization: Bearer <DAGGER['METRICS_TOKEN']>``. Anyone else gets 401 (no credentials, or a
wrong token) or 403 (signed in, not staff). When metrics are off (``prometheus_client`` is not
installed, or ``DAGGER['METRICS']`` is false) it answers 404 to those allowed to read it.
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from ..conf import dagger_settings
from . import metrics


def _token_ok(request: HttpRequest) -> bool | None:
    """True: the right bearer token; False: a wrong one (or none is configured); None: none sent."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    expected = dagger_settings.METRICS_TOKEN
    if not expected:
        return False
    return hmac.compare_digest(given.strip().encode(), str(expected).encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition of dagger's metrics, for staff users and the metrics token."""
    token = _token_ok(request)
    user = getattr(request, "user", None)
    if not token:
        if token is False or user is None or not user.is_authenticated:
            response = HttpResponse("metrics need a staff user or the metrics token\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="dagger metrics"'
            return response
        if not user.is_staff:
            return HttpResponse("metrics are for staff users\n", status=403)
    if metrics.get() is None:
        return HttpResponse(
            "metrics are off: install the metrics extra (prometheus_client) and keep DAGGER['METRICS']\n",
            status=404,
        )
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)
