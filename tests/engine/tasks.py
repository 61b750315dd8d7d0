"""Task classes used by the engine tests (importable by path, as the engine requires)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from dagger_django import (
    DecisionTask,
    ExecutorTask,
    KafkaListenerTask,
    TaskStatus,
    TaskStatusEnum,
    TriggerTask,
)

STOPPED_HOOKS: list[str] = []
CALLBACK_SEEN: list[tuple[str, str]] = []
#: Side effects outside the engine's transactions: (task name, idempotency key) per run.
EFFECTS: list[tuple[str, str]] = []


def short(task: Any) -> str:
    return str(task.task_name).rsplit(".", 1)[-1]


class Record(ExecutorTask):
    """Appends its own name to runtime parameter ``trace``."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))


class Effect(ExecutorTask):
    """Records its run in ``EFFECTS`` (a side effect no rollback undoes) and in ``trace``."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        EFFECTS.append((short(self), self.idempotency_key))
        runtime_parameters.setdefault("trace", []).append(short(self))


class AsyncRecord(ExecutorTask):
    async def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))


class SetFlag(ExecutorTask):
    """Sets runtime parameter ``<own name>`` (safe in parallel branches: one key each)."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters[short(self)] = True


class Boom(ExecutorTask):
    """Raises until runtime parameter ``fixed`` is true."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        if not runtime_parameters.get("fixed"):
            raise RuntimeError("boom")
        runtime_parameters.setdefault("trace", []).append(short(self))


class Flaky(ExecutorTask):
    """Fails its first ``fail_times`` attempts, with two retries and a 10 s backoff."""

    max_retries = 2
    retry_backoff = 10.0

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("keys", []).append(self.idempotency_key)
        if self.attempt <= runtime_parameters.get("fail_times", 0):
            raise ConnectionError(f"attempt {self.attempt} failed")


class SetsFailure(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        self.status = TaskStatus(code=TaskStatusEnum.FAILURE.name, value=TaskStatusEnum.FAILURE.value)


class WritesNonJson(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["when"] = object()


class PickByParameter(DecisionTask):
    """Chooses successor number ``runtime_parameters['branch']`` (None: no branch)."""

    def evaluate(self, **kwargs: Any) -> Any:
        branch = kwargs.get("branch")
        return None if branch is None else self.next_dags[branch]


class PickForeign(DecisionTask):
    async def evaluate(self, **kwargs: Any) -> Any:
        return uuid.uuid4()


class Waiter(KafkaListenerTask):
    """A listener that waits (the Kafka issue delivers its messages)."""

    correlatable_key = "order_id"

    async def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return True

    async def stop(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        STOPPED_HOOKS.append(short(self))


def sync_callback(workflow: Any) -> None:
    CALLBACK_SEEN.append(("sync", workflow.status.code))


async def async_callback(workflow: Any) -> None:
    CALLBACK_SEEN.append(("async", workflow.status.code))


class WritesNul(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["name"] = "a\x00b"


class TriggerBoom(TriggerTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        if not runtime_parameters.get("fixed"):
            raise RuntimeError("trigger boom")


class Stoppable(ExecutorTask):
    """Records its ``stop`` hook in STOPPED_HOOKS."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))

    def stop(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        STOPPED_HOOKS.append(short(self))


class StopBoom(Stoppable):
    def stop(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        raise RuntimeError("stop hook broke")


#: Blocking's runs, and the event that lets them finish (tests set it).
BLOCKING_RUNS: list[str] = []
BLOCKING_RELEASE = threading.Event()


class Blocking(ExecutorTask):
    """Runs until the test sets BLOCKING_RELEASE (a long task), counting its runs."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        BLOCKING_RUNS.append(self.idempotency_key)
        if not BLOCKING_RELEASE.wait(timeout=20):
            raise RuntimeError("never released")
