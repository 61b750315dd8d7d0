"""How big a fault campaign runs: short in ``make test`` (CI), full size in ``make faults``.

Every campaign reads its sizes through :func:`scale`, so one environment variable switches the
whole set: ``DAGGER_FAULTS=full`` (set by ``make faults``) gives the figures of
``docs/reliability.md``; anything else gives the short version that CI runs on every landing.
"""

from __future__ import annotations

import os

FULL_ENV = "DAGGER_FAULTS"


def full() -> bool:
    """Whether this run is the full campaign (``DAGGER_FAULTS=full``)."""
    return os.environ.get(FULL_ENV, "").strip().lower() == "full"


def scale(short: int, full_size: int) -> int:
    """``full_size`` in a full campaign, ``short`` otherwise."""
    return full_size if full() else short
