"""System checks: incoherent settings are reported at start-up with a hint, not at first use."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, register
from django.utils.module_loading import import_string


@register("dagger_django")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from .conf import dagger_settings

    problems: list[Any] = []
    try:
        import_string(dagger_settings.DISPATCHER)
    except ImportError as exc:
        problems.append(
            Error(
                f"DAGGER['DISPATCHER'] cannot be imported: {exc}",
                hint="Use 'dagger_django.adapters.celery.CeleryDispatcher' (default).",
                id="dagger_django.E001",
            )
        )
    if int(dagger_settings.MAX_RUNTIME_PARAMETERS_BYTES) <= 0:
        problems.append(
            Error(
                "DAGGER['MAX_RUNTIME_PARAMETERS_BYTES'] must be a positive number of bytes.",
                id="dagger_django.E002",
            )
        )
    if int(dagger_settings.INLINE_STEPS) < 0 or float(dagger_settings.INLINE_SECONDS) < 0:
        problems.append(
            Error(
                "DAGGER['INLINE_STEPS'] and ['INLINE_SECONDS'] must not be negative.", id="dagger_django.E003"
            )
        )
    if float(dagger_settings.TRIGGER_INTERVAL) <= 0:
        problems.append(Error("DAGGER['TRIGGER_INTERVAL'] must be positive.", id="dagger_django.E004"))
    for cb in dagger_settings.TASK_UPDATE_CALLBACKS:
        if isinstance(cb, str):
            try:
                import_string(cb)
            except ImportError as exc:
                problems.append(
                    Error(f"Task update callback {cb!r} cannot be imported: {exc}", id="dagger_django.E005")
                )
    return problems
