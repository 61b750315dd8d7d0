"""Metrics (Prometheus) and traces (OpenTelemetry), each optional (docs/observability.md).

Nothing here is imported by the engine: the engine tells its commit observers
(``engine.ports.observers``) what each committed transition changed, and :func:`install`, called
when the app is ready, registers the observers of the extras that are installed (``metrics``:
``prometheus_client``; ``tracing``: ``opentelemetry-api``) and enabled (``DAGGER['METRICS']``,
``DAGGER['TRACING']``). When a package is missing nothing of it is imported and nothing is
registered: the engine's cost is then one loop over an empty tuple per commit.
"""

from __future__ import annotations

from . import metrics, tracing


def install() -> None:
    """Register the observers of the installed and enabled extras (idempotent)."""
    metrics.install()
    tracing.install()
