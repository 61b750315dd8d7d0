"""Task classes of the time-driven engine tests (importable by path, as the engine requires)."""

from __future__ import annotations

from typing import Any

from dagger_django import (
    DefaultMonitoringTask,
    ExecutorTask,
    IntervalTask,
    MonitoredProcessTemplateDAGInstance,
    TaskStatus,
    TaskStatusEnum,
    TriggerTask,
)
from dagger_django.engine import ports


def short(task: Any) -> str:
    return str(task.task_name).rsplit(".", 1)[-1]


def trace(runtime_parameters: dict[str, Any], entry: str) -> None:
    runtime_parameters.setdefault("trace", []).append(entry)


class Remind(TriggerTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        trace(runtime_parameters, short(self))
        runtime_parameters[f"{short(self)}_ran_at"] = ports.now().timestamp()


class TriggerRaises(TriggerTask):
    """Raises until runtime parameter ``fixed`` is true."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        if not runtime_parameters.get("fixed"):
            raise RuntimeError("trigger failed")
        trace(runtime_parameters, short(self))


class TriggerSetsFailure(TriggerTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        self.status = TaskStatus(code=TaskStatusEnum.FAILURE.name, value=TaskStatusEnum.FAILURE.value)


class PollUntil(IntervalTask):
    """Ready at poll number ``ready_after`` (never when it is absent); counts polls in ``polls``."""

    def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:
        runtime_parameters["polls"] = runtime_parameters.get("polls", 0) + 1
        ready_after = runtime_parameters.get("ready_after")
        return ready_after is not None and runtime_parameters["polls"] >= ready_after

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        trace(runtime_parameters, f"executed after {runtime_parameters.get('polls', 0)} polls")
        runtime_parameters["executed_at"] = ports.now().timestamp()


class AsyncPollUntil(PollUntil):
    async def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:  # type: ignore[override]
        return PollUntil.interval_execute(self, runtime_parameters)


class SlowPoll(PollUntil):
    """A poll that takes ``poll_takes`` seconds of the engine's (frozen) clock, then says False."""

    def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:
        clock = ports.get_clock()
        clock.advance(seconds=runtime_parameters["poll_takes"])  # type: ignore[attr-defined]
        runtime_parameters["polls"] = runtime_parameters.get("polls", 0) + 1
        return False


class PollSaysMaybe(IntervalTask):
    def interval_execute(self, runtime_parameters: dict[str, Any]) -> Any:
        return "maybe"


class PollRaisesOnAttempts(PollUntil):
    """Raises on the attempts listed in ``fail_attempts``; one retry per poll."""

    max_retries = 1
    retry_backoff = 5.0

    def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:
        if self.attempt in runtime_parameters.get("fail_attempts", []):
            raise ConnectionError(f"attempt {self.attempt}")
        return super().interval_execute(runtime_parameters)


class Watcher(DefaultMonitoringTask):
    """Records each call in ``monitor_calls`` as ``[monitored task name, its status]``."""

    def process_monitored_task(self, monitored_task: Any, workflow_instance: Any) -> None:
        workflow_instance.runtime_parameters.setdefault("monitor_calls", []).append(
            [short(monitored_task), monitored_task.status.code]
        )


class WatcherRaises(DefaultMonitoringTask):
    def process_monitored_task(self, monitored_task: Any, workflow_instance: Any) -> None:
        raise RuntimeError("monitor hook failed")


class WatchedProcess(MonitoredProcessTemplateDAGInstance):
    def get_monitoring_task_type(self) -> type:
        return Watcher


class WatchedByRaiser(MonitoredProcessTemplateDAGInstance):
    def get_monitoring_task_type(self) -> type:
        return WatcherRaises


class WatchedByNonMonitor(MonitoredProcessTemplateDAGInstance):
    def get_monitoring_task_type(self) -> type:
        return ExecutorTask


class Step(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        trace(runtime_parameters, short(self))


class TriggerUnbuildable(TriggerTask):
    """A trigger whose object cannot be made (its constructor raises)."""

    def __init__(self, **fields: Any) -> None:
        raise TypeError("this trigger cannot be built")
