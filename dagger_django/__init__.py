"""dagger_django: durable, event-driven workflows with the API of Dagger (wf-dagger), on Django.

Every public name is importable from here (``from dagger_django import Dagger, ExecutorTask``).
Names are resolved lazily (PEP 562), so importing this package never touches Django's app
registry or models.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXCEPTIONS = (
    "DaggerError",
    "InvalidTaskType",
    "TaskInvalidState",
    "TemplateDoesNotExist",
    "InvalidTriggerTimeForTask",
    "InvalidTemplate",
    "InvalidRuntimeParameters",
    "RuntimeParametersTooLarge",
    "WorkflowDoesNotExist",
    "TaskClassNotFound",
    "InvalidTaskResult",
    "SyncCallInAsyncContext",
    "SchemaRegistryUnavailable",
)
_ENUMS = (
    "TaskStatusEnum",
    "TaskType",
    "TaskOperator",
    "TaskStatus",
    "TaskLookupKey",
    "NodeKind",
    "COMPLETE_BY_KEY",
    "TERMINAL_STATUSES",
)
_TASKS = (
    "KT",
    "VT",
    "ITask",
    "ExecutorTask",
    "KafkaCommandTask",
    "SensorTask",
    "KafkaListenerTask",
    "TriggerTask",
    "IntervalTask",
    "MonitoringTask",
    "DefaultMonitoringTask",
    "SkipOnMaxDurationTask",
    "IMonitoredTask",
    "DecisionTask",
    "SystemTask",
    "SystemTimerTask",
    "INonLeafNodeTask",
    "ParallelCompositeTask",
    "IProcessTemplateDAGInstance",
    "DefaultProcessTemplateDAGInstance",
    "MonitoredProcessTemplateDAGInstance",
    "ITemplateDAGInstance",
    "DefaultTemplateDAGInstance",
    "TaskDTO",
    "CorrelatableMapValue",
    "Trigger",
)
_TEMPLATES = (
    "DefaultTemplateBuilder",
    "ProcessTemplateDagBuilder",
    "DynamicProcessTemplateDagBuilder",
    "ParallelCompositeProcessTemplateDagBuilder",
    "TaskTemplateBuilder",
    "DefaultTaskTemplateBuilder",
    "ParallelCompositeTaskTemplateBuilder",
    "KafkaCommandTaskTemplateBuilder",
    "KafkaListenerTaskTemplateBuilder",
    "DecisionTaskTemplateBuilder",
    "TriggerTaskTemplateBuilder",
    "IntervalTaskTemplateBuilder",
    "ITemplateDAGBuilder",
    "IProcessTemplateDAGBuilder",
    "TemplateDAG",
    "ITemplateDAG",
    "ProcessTemplateDAG",
    "IProcessTemplateDAG",
    "ParallelCompositeProcessTemplateDAG",
    "DynamicProcessTemplateDAG",
    "IDynamicProcessTemplateDAG",
    "TaskTemplate",
    "DefaultTaskTemplate",
    "DefaultKafkaTaskTemplate",
    "DefaultTriggerTaskTemplate",
    "DefaultIntervalTaskTemplate",
    "ParallelCompositeTaskTemplate",
)

_EXPORTS: dict[str, str] = {
    **{name: "dagger_django.exceptions" for name in _EXCEPTIONS},
    **{name: "dagger_django.definitions.enums" for name in _ENUMS},
    **{name: "dagger_django.definitions.tasks" for name in _TASKS},
    **{name: "dagger_django.definitions.templates" for name in _TEMPLATES},
    "Dagger": "dagger_django.definitions.registry",
    "DaggerCompatibilityWarning": "dagger_django.definitions.registry",
    "Topic": "dagger_django.definitions.registry",
    "AerospikeConfig": "dagger_django.definitions.registry",
    "DAGBuilderHelper": "dagger_django.definitions.helper",
    "Param": "dagger_django.definitions.params",
    "ParameterDeclaration": "dagger_django.definitions.params",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
