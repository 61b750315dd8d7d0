"""Task classes run by the real Celery worker in the end-to-end tests (imported by path there)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dagger_django import DecisionTask, ExecutorTask, TriggerTask


def short(task: Any) -> str:
    return str(task.task_name).rsplit(".", 1)[-1]


class Step(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))


class AsyncFlag(ExecutorTask):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters[short(self)] = os.getpid()


class DatabaseSession(ExecutorTask):
    """Records which PostgreSQL backend served this worker process: (process id, backend pid)."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        from django.db import connection

        connection.ensure_connection()
        sessions = runtime_parameters.setdefault("sessions", [])
        sessions.append([os.getpid(), connection.connection.info.backend_pid])


class Choose(DecisionTask):
    def evaluate(self, **kwargs: Any) -> Any:
        return self.next_dags[kwargs["branch"]]


class FailsUntilFixed(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        if not runtime_parameters.get("fixed"):
            raise RuntimeError("not fixed yet")


class RetriedQuickly(ExecutorTask):
    max_retries = 3
    retry_backoff = 0.2

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        if self.attempt < 3:
            raise TimeoutError(f"attempt {self.attempt}")
        runtime_parameters["succeeded_on"] = self.attempt


class Blocks(ExecutorTask):
    """Writes its pid to ``marker`` and waits (at most 60 s) until the ``release`` file exists."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        Path(runtime_parameters["marker"]).write_text(f"{os.getpid()} {self.attempt}")
        deadline = time.monotonic() + 60
        while not Path(runtime_parameters["release"]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        runtime_parameters.setdefault("attempts_seen", []).append(self.attempt)


class When(TriggerTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))
        runtime_parameters["fired_at"] = time.time()
