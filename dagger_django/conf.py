"""dagger_django's settings, read lazily from ``settings.DAGGER`` with typed defaults.

Values are looked up on every access (a dict lookup), so ``override_settings`` and the pytest
``settings`` fixture work. Arguments given to a ``Dagger(...)`` constructor (the original's way of
configuring) override the Django setting of the same meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class Defaults:
    #: Dotted path of the class that sends work to workers (engine.ports.Dispatcher).
    DISPATCHER: str = "dagger_django.adapters.celery.CeleryDispatcher"
    #: Largest accepted runtime parameters, in bytes of JSON.
    MAX_RUNTIME_PARAMETERS_BYTES: int = 256 * 1024
    #: How many consecutive steps of one workflow a worker runs in one Celery task before it
    #: hands the rest back to the queue (0 = one step per Celery task).
    INLINE_STEPS: int = 50
    #: ... and for how long, in seconds.
    INLINE_SECONDS: float = 5.0
    #: Delete the workflow (nodes and history too) once it is finished.
    DELETE_WORKFLOW_ON_COMPLETE: bool = False
    #: Callables (or dotted paths) called after commit with the workflow instance on each update.
    TASK_UPDATE_CALLBACKS: tuple[Any, ...] = ()
    #: Kafka topic receiving every workflow update (the Kafka issue wires the relay).
    TASK_UPDATE_TOPIC: str | None = None
    #: Seconds between timer sweeps (django-celery-beat entry).
    TRIGGER_INTERVAL: float = 60.0
    #: Timers fired per sweep at most.
    MAX_TASKS_PER_TRIGGER: int = 2000
    #: Re-dispatch nodes left SUBMITTED/EXECUTING past a lease.
    RESTART_TASKS_ON_BOOT: bool = True
    #: Accepted for compatibility: the correlation table needs no chunking.
    MAX_CORRELETABLE_KEYS_IN_VALUES: int = 15000
    #: Celery queue for dagger's tasks (None = the project's default queue).
    CELERY_QUEUE: str | None = None


_OVERRIDE_NAMES = {
    "trigger_interval": "TRIGGER_INTERVAL",
    "max_tasks_per_trigger": "MAX_TASKS_PER_TRIGGER",
    "restart_tasks_on_boot": "RESTART_TASKS_ON_BOOT",
    "delete_workflow_on_complete": "DELETE_WORKFLOW_ON_COMPLETE",
    "task_update_topic": "TASK_UPDATE_TOPIC",
    "task_update_callbacks": "TASK_UPDATE_CALLBACKS",
    "max_correletable_keys_in_values": "MAX_CORRELETABLE_KEYS_IN_VALUES",
}


class DaggerSettings:
    _names = frozenset(f.name for f in fields(Defaults))

    def __getattr__(self, name: str) -> Any:
        if name not in self._names:
            raise AttributeError(f"Unknown dagger_django setting: {name}")
        user = getattr(settings, "DAGGER", {}) or {}
        value = user.get(name, getattr(Defaults, name))
        engine = _engine_overrides()
        for arg, setting in _OVERRIDE_NAMES.items():
            if setting == name and arg in engine:
                value = engine[arg]
        return value

    def callbacks(self) -> list[Any]:
        return [import_string(cb) if isinstance(cb, str) else cb for cb in self.TASK_UPDATE_CALLBACKS]


def _engine_overrides() -> dict[str, Any]:
    from .definitions.registry import Dagger

    app = getattr(Dagger, "app", None)
    if app is None:
        return {}
    return app.overrides()


dagger_settings = DaggerSettings()
