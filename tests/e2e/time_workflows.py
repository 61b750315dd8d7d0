"""Task classes of the time-driven end-to-end tests (run by the real worker, imported by path)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dagger_django import (
    DefaultMonitoringTask,
    ExecutorTask,
    IntervalTask,
    MonitoredProcessTemplateDAGInstance,
    TriggerTask,
)


def short(task: Any) -> str:
    return str(task.task_name).rsplit(".", 1)[-1]


class Stamp(TriggerTask):
    """Records when it ran (wall clock of the worker)."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))
        runtime_parameters[f"{short(self)}_at"] = time.time()


class Step(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters.setdefault("trace", []).append(short(self))


class PollFile(IntervalTask):
    """Ready once the file ``ready_file`` exists (never, without the key)."""

    def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:
        runtime_parameters["polls"] = runtime_parameters.get("polls", 0) + 1
        ready = runtime_parameters.get("ready_file")
        return bool(ready) and Path(ready).exists()

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        runtime_parameters["executed_at"] = time.time()


class LateWatcher(DefaultMonitoringTask):
    """Touches ``monitor_marker`` and records the call: the test sees it while the process runs."""

    def process_monitored_task(self, monitored_task: Any, workflow_instance: Any) -> None:
        params = workflow_instance.runtime_parameters
        params.setdefault("monitor_calls", []).append([short(monitored_task), monitored_task.status.code])
        Path(params["monitor_marker"]).write_text(str(time.time()))


class Watched(MonitoredProcessTemplateDAGInstance):
    def get_monitoring_task_type(self) -> type:
        return LateWatcher
