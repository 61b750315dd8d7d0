"""A bridge consumer that SIGKILLs its process between routing a batch and committing its offsets.

The bridge routes a batch (one database transaction) and only then commits the batch's offsets
(``consumer.commit``); a bridge that dies in between must lose and double nothing. This wrapper of
``confluent_kafka.Consumer`` dies there, before the k-th commit, that is after the k-th batch was
routed and committed to the database. A campaign installs it through the bridge's consumer factory
(``DAGGER['KAFKA_CONSUMER_FACTORY']``, which the demo settings read from
``DAGGER_KAFKA_CONSUMER_FACTORY``) and gives k in ``FAULTS_BRIDGE_CRASH_AFTER``: see :func:`crash_env`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

#: The environment variable that holds k, the batch after whose routing the bridge dies.
CRASH_AFTER_ENV = "FAULTS_BRIDGE_CRASH_AFTER"
#: Printed (to stderr, the bridge's log) just before the kill.
KILL_MESSAGE = "crashing consumer: killing the bridge between routing a batch and its offset commit"


def crash_env(k: int) -> dict[str, str]:
    """The environment of a bridge process that dies after routing its k-th batch."""
    return {"DAGGER_KAFKA_CONSUMER_FACTORY": f"{__name__}.CrashingConsumer", CRASH_AFTER_ENV: str(k)}


class CrashingConsumer:
    """``confluent_kafka.Consumer`` whose k-th ``commit`` SIGKILLs the process instead."""

    def __init__(self, config: dict[str, Any]) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer(config)
        self._crash_after = int(os.environ[CRASH_AFTER_ENV])
        self._commits = 0
        if self._crash_after < 1:
            raise ValueError(f"{CRASH_AFTER_ENV} must be at least 1, not {self._crash_after}")

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self._commits += 1
        if self._commits >= self._crash_after:
            print(f"{KILL_MESSAGE} (batch {self._commits})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return self._consumer.commit(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)
