"""Imported by the driver in tests/faults/test_accounting.py (``--import``): the driver gets SIGTERM
right after a workflow's creation has committed, before it has written that workflow's line."""

from __future__ import annotations

import os
import signal
from typing import Any

from dagger_django import signals


def _terminate(**kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


# Signals are sent after the commit (engine/txn.py, ``_announce``).
signals.workflow_status_changed.connect(_terminate, dispatch_uid="faults.sigterm_after_commit")
