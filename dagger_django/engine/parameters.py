"""Runtime parameters: validation, and merging what a task changed into what is stored."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from ..conf import dagger_settings
from ..exceptions import InvalidRuntimeParameters, RuntimeParametersTooLarge


def dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def validate(value: Any, *, what: str = "runtime_parameters") -> str:
    """Check ``value`` is a JSON object of bounded size; return its JSON text.

    Values Django's JSON encoder knows (UUID, datetime, date, time, timedelta, Decimal) are
    turned into its text in place (``_encode``): they come back as strings.
    """
    if not isinstance(value, dict):
        raise InvalidRuntimeParameters(f"{what} must be a JSON object, got {type(value).__name__}.")
    bad_keys = [k for k in value if not isinstance(k, str)]
    if bad_keys:
        raise InvalidRuntimeParameters(f"{what} keys must be strings, got {bad_keys[:3]!r}.")
    text = _encode(value, what=what)
    if "\\u0000" in text and has_nul(value):
        raise InvalidRuntimeParameters(
            f"{what} contain a NUL character (\\u0000), which the database cannot store."
        )
    limit = int(dagger_settings.MAX_RUNTIME_PARAMETERS_BYTES)
    size = len(text.encode())
    if size > limit:
        raise RuntimeParametersTooLarge(
            f"{what} take {size} bytes of JSON; the limit is {limit} (DAGGER['MAX_RUNTIME_PARAMETERS_BYTES'])."
        )
    return text


def _encode(value: dict[str, Any], *, what: str) -> str:
    """The JSON text of ``value``. UUID, datetime, date, time, timedelta and Decimal values are
    accepted as Django's ``DjangoJSONEncoder`` writes them (text); ``value`` is then rewritten in
    place with that text, so what is stored, and what every hook sees, is plain JSON."""
    try:
        return dumps(value)
    except (TypeError, ValueError) as exc:
        try:
            text = json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError):
            raise InvalidRuntimeParameters(f"{what} cannot be stored as JSON: {exc}") from exc
    plain = json.loads(text)
    value.clear()
    value.update(plain)
    return text


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL's jsonb refuses it)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def business_key(value: Any) -> str | None:
    """The text stored (and searched) as a workflow's business key: scalars as text, others as JSON."""
    if value is None:
        return None
    text = (
        value if isinstance(value, str) else dumps(value) if isinstance(value, (dict, list)) else str(value)
    )
    return text[:255]


def diff(before_json: str, after: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What a task changed: (keys set to a new value, keys removed), against a JSON snapshot."""
    before = json.loads(before_json)
    changed = {k: v for k, v in after.items() if k not in before or before[k] != v}
    removed = [k for k in before if k not in after]
    return changed, removed


def merge(current: dict[str, Any], changed: dict[str, Any], removed: list[str]) -> dict[str, Any]:
    """Apply a task's changes onto the stored parameters (which other branches may have changed)."""
    merged = dict(current)
    merged.update(changed)
    for key in removed:
        merged.pop(key, None)
    return merged
