"""Runtime parameters: validation, and merging what a task changed into what is stored."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from ..conf import dagger_settings
from ..definitions.params import matches, value_type_name
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
    reason, detail = unstorable_text(value, text)
    if reason:
        raise InvalidRuntimeParameters(f"{what} cannot be stored: {detail}.")
    limit = int(dagger_settings.MAX_RUNTIME_PARAMETERS_BYTES)
    size = len(text.encode())
    if size > limit:
        raise RuntimeParametersTooLarge(
            f"{what} take {size} bytes of JSON; the limit is {limit} (DAGGER['MAX_RUNTIME_PARAMETERS_BYTES'])."
        )
    return text


def declared(template: Any, params: dict[str, Any], *, partition_key_lookup: str | None) -> dict[str, Any]:
    """The runtime parameters of a new workflow of ``template``, checked against its declared
    parameters (if it declares them) with their defaults filled in; ``params`` is valid JSON
    already (:func:`validate`).

    ``partition_key_lookup`` must name one of them: the original's default (``repartition=True``)
    raised ``KeyError`` there, and a workflow without the business key it was created for cannot
    be found by it.
    """
    declaration = getattr(template, "parameters", None)
    if declaration is not None:
        checked = declaration.apply(params)
        if len(checked) != len(params):  # defaults were added: check the size again
            validate(checked)
        params = checked
    if partition_key_lookup and partition_key_lookup not in params:
        raise InvalidRuntimeParameters(
            f"partition_key_lookup names {partition_key_lookup!r}, which is not a runtime parameter "
            "of this workflow: give it a value, or leave partition_key_lookup out.",
            fields={"partition_key_lookup": [f"No runtime parameter named {partition_key_lookup!r}."]},
        )
    return params


def changes_declared(stored: Any, changes: dict[str, Any]) -> None:
    """Check an operator's ``changes`` of a running workflow's parameters against its template
    version's declaration (``stored``: the ``parameters`` entry of its stored graph, None when
    it declares none): a declared parameter keeps its declared type. Names the declaration does
    not know may be added, as tasks add them at run time. Raises
    :class:`InvalidRuntimeParameters` naming each wrong one."""
    if not isinstance(stored, dict):
        return
    types = {
        p["name"]: p["type"]
        for p in stored.get("params", ())
        if isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("type"), str)
    }
    problems = {
        name: [f"Must be {types[name]}, not {value_type_name(value)}."]
        for name, value in changes.items()
        if name in types and not _of_type(types[name], value)
    }
    if problems:
        parts = "; ".join(f"{name}: {messages[0].rstrip('.')}" for name, messages in problems.items())
        raise InvalidRuntimeParameters(
            f"runtime parameter changes do not match the template's declaration: {parts}.",
            fields={"runtime_parameters": problems},
        )


def _of_type(type_: str, value: Any) -> bool:
    try:
        return matches(type_, value)
    except KeyError:  # a type this release does not know: not checked
        return True


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


#: Deepest JSON nesting accepted anywhere (Python's ``json`` itself stops near 1,000 levels, and
#: code that walks a payload recursively - ours, a listener's, PostgreSQL's - must not have to).
MAX_JSON_DEPTH = 200


def _strings(value: Any) -> Any:
    """Every string of a JSON value (object keys included), without recursion: a message nested
    thousands deep must not exhaust the stack of whoever checks it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str):
                    yield key
                stack.append(inner)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL's jsonb refuses it)."""
    return any("\x00" in text for text in _strings(value))


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone UTF-16 surrogate (``"\\ud800"`` decoded from JSON): it has no
    UTF-8 form, so neither the database nor a Kafka producer can take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_depth(value: Any, *, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``value`` nests (a scalar is 0), counted without recursion; stops past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((inner, depth) for inner in (item.values() if isinstance(item, dict) else item))
    return deepest


def unstorable_text(value: Any, text: str | None = None) -> tuple[str, str]:
    """``(reason, detail)`` when a JSON value cannot be stored as jsonb, else ``("", "")``.

    Reasons: ``too_deep`` (past :data:`MAX_JSON_DEPTH`), ``nul_character`` (U+0000, refused by
    PostgreSQL), ``bad_unicode`` (a lone surrogate, which has no UTF-8 form). ``text``, the
    value's ``json.dumps`` (ASCII) form when the caller has it, lets the common case skip the walk.
    """
    if text is not None:
        nests = text.count("[") + text.count("{") > MAX_JSON_DEPTH
        if not nests and "\\u0000" not in text and "\\ud" not in text:
            return "", ""
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        return "too_deep", f"the JSON nests deeper than {MAX_JSON_DEPTH} levels"
    for text in _strings(value):
        if "\x00" in text:
            return (
                "nul_character",
                "a string contains a NUL character (\\u0000), which the database cannot store",
            )
        if has_lone_surrogate(text):
            return "bad_unicode", "a string contains a lone UTF-16 surrogate, which has no UTF-8 form"
    return "", ""


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
