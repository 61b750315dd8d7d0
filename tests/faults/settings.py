"""Settings of the fault campaigns' processes: the demo project's, plus a few it does not read from
the environment (so a campaign sets them through ``settings.DAGGER``, the engine's real path)."""

from __future__ import annotations

import os

from config.settings import *  # noqa: F403 - the demo project's settings, unchanged
from config.settings import DAGGER

if os.environ.get("DAGGER_DELIVERY_LEASE_SECONDS"):
    DAGGER["DELIVERY_LEASE_SECONDS"] = float(os.environ["DAGGER_DELIVERY_LEASE_SECONDS"])
if os.environ.get("DAGGER_OUTBOX_COMMIT_WAIT"):
    DAGGER["OUTBOX_COMMIT_WAIT"] = float(os.environ["DAGGER_OUTBOX_COMMIT_WAIT"])
