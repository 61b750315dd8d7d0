"""Declared runtime parameters: what a template expects in ``runtime_parameters`` when created.

A declaration is optional. A template without one accepts any JSON object, as the original did.
A template with one checks every creation (``template.create_instance(...)`` and the API's
``POST workflows/``) before anything is stored:

* a required parameter that is missing is an error;
* a value of the wrong type is an error (types are JSON types: ``str``, ``int``, ``float``,
  ``bool``, ``dict``, ``list``, or ``"any"``; ``float`` accepts integers, ``int`` refuses
  ``True``, and ``null`` is only an ``"any"`` value);
* a name that is not declared is an error, unless the declaration allows extra names;
* an optional parameter that is missing gets its default, if it has one.

Every problem is reported at once, by parameter name, in one :class:`InvalidRuntimeParameters`
whose ``fields`` is ``{"runtime_parameters": {name: [message, ...]}}`` (the API's error shape).

The declaration is part of the template's graph (``to_graph()["parameters"]``), so it is stored
with the template version and changing it makes a new version. Only creation is checked: later
changes (tasks, listener messages, ``PATCH runtime-parameters/``) are not.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..exceptions import InvalidRuntimeParameters, InvalidTemplate

#: Declared type name -> the Python types of its JSON values.
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list, tuple),
    "any": (object,),
}
_PYTHON_TYPES: dict[Any, str] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    dict: "dict",
    list: "list",
}
_JSON_NAMES: dict[type, str] = {
    str: "str",
    bool: "bool",
    int: "int",
    float: "float",
    dict: "dict",
    list: "list",
    tuple: "list",
    type(None): "null",
}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: "No default": an optional parameter without a default is left out when it is not given.
MISSING: Any = _Missing()


def type_name(value: Any) -> str:
    """The declared type name of ``value``: ``str``/``"str"``, ..., ``"any"`` (or ``object``)."""
    if isinstance(value, str) and value in _TYPES:
        return value
    if value is object or value is Any:
        return "any"
    name = _PYTHON_TYPES.get(value)
    if name is None:
        raise InvalidTemplate(
            f"parameter type {value!r} is not one of str, int, float, bool, dict, list or 'any'"
        )
    return name


def value_type_name(value: Any) -> str:
    """The JSON type of a value, as the messages name it (``str``, ``int``, ``null``, ...)."""
    for cls in type(value).__mro__:
        name = _JSON_NAMES.get(cls)
        if name is not None:
            return name
    return type(value).__name__


def matches(type_: str, value: Any) -> bool:
    """Whether ``value`` is a JSON value of declared type ``type_``."""
    if type_ == "any":
        return True
    if isinstance(value, bool) and type_ != "bool":
        return False
    return isinstance(value, _TYPES[type_])


@dataclass(frozen=True)
class Param:
    """One declared runtime parameter.

    ``Param("order_id", str)`` is required; ``Param("amount", float, default=0.0)`` and
    ``Param("note", str, required=False)`` are optional. ``required`` defaults to True without a
    default and to False with one; a required parameter cannot have a default. ``type`` is
    ``str``, ``int``, ``float``, ``bool``, ``dict``, ``list`` (or their names) or ``"any"``;
    it is kept as its name.
    """

    name: str
    type: Any = "any"
    required: bool | None = None
    default: Any = MISSING
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidTemplate(f"a parameter name must be a non-empty str, not {self.name!r}")
        # Stored as its name ("str", ..., "any"), whichever way it was given.
        object.__setattr__(self, "type", type_name(self.type))
        has_default = self.default is not MISSING
        required = (not has_default) if self.required is None else bool(self.required)
        if required and has_default:
            raise InvalidTemplate(f"parameter {self.name!r} is required, so it cannot have a default")
        object.__setattr__(self, "required", required)
        if has_default:
            try:
                json.dumps(self.default, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidTemplate(f"parameter {self.name!r}: its default is not JSON ({exc})") from exc
            if not matches(self.type_name, self.default):
                raise InvalidTemplate(
                    f"parameter {self.name!r}: default {self.default!r} is not of type {self.type_name}"
                )

    @property
    def type_name(self) -> str:
        return str(self.type)

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING

    def to_json(self) -> dict[str, Any]:
        described: dict[str, Any] = {"name": self.name, "type": self.type_name, "required": self.required}
        if self.has_default:
            described["default"] = self.default
        if self.description:
            described["description"] = self.description
        return described


def _param(name: str, spec: Any) -> Param:
    """A :class:`Param` from one entry of the dict form: a type, or a dict of Param's fields."""
    if isinstance(spec, Param):
        if spec.name != name:
            raise InvalidTemplate(f"parameter {name!r} is declared as Param({spec.name!r}, ...)")
        return spec
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"type", "required", "default", "description"})
        if unknown:
            raise InvalidTemplate(f"parameter {name!r}: unknown settings {unknown}")
        return Param(name, **dict(spec))
    return Param(name, spec)


@dataclass(frozen=True)
class ParameterDeclaration:
    """The declared runtime parameters of a template; ``allow_extra``: undeclared names pass."""

    params: tuple[Param, ...]
    allow_extra: bool = False

    @classmethod
    def of(
        cls, parameters: Iterable[Param] | Mapping[str, Any], *, allow_extra: bool = False
    ) -> ParameterDeclaration:
        """From a list of :class:`Param` or a dict ``{name: type}`` / ``{name: {"type": ..., ...}}``."""
        if isinstance(parameters, ParameterDeclaration):
            return cls(parameters.params, allow_extra or parameters.allow_extra)
        if isinstance(parameters, Mapping):
            params = [_param(name, spec) for name, spec in parameters.items()]
        elif isinstance(parameters, str | bytes) or not isinstance(parameters, Iterable):
            raise InvalidTemplate(f"parameters must be a list of Param or a dict, not {parameters!r}")
        else:
            params = list(parameters)
            wrong = [p for p in params if not isinstance(p, Param)]
            if wrong:
                raise InvalidTemplate(f"parameters must be Param objects, not {wrong[0]!r}")
        names = [p.name for p in params]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidTemplate(f"parameters declared twice: {duplicates}")
        return cls(tuple(params), bool(allow_extra))

    def to_json(self) -> dict[str, Any]:
        return {"params": [p.to_json() for p in self.params], "allow_extra": self.allow_extra}

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def apply(self, values: Mapping[str, Any], *, what: str = "runtime_parameters") -> dict[str, Any]:
        """``values`` checked against the declaration, with defaults filled in (a new dict).

        Raises :class:`InvalidRuntimeParameters` naming every parameter that is missing, of the
        wrong type or undeclared.
        """
        problems: dict[str, list[str]] = {}
        result = dict(values)
        for param in self.params:
            if param.name not in values:
                if param.required:
                    problems[param.name] = [f"This parameter is required ({param.type_name})."]
                elif param.has_default:
                    result[param.name] = copy.deepcopy(param.default)
                continue
            value = values[param.name]
            if not matches(param.type_name, value):
                problems[param.name] = [f"Must be {param.type_name}, not {value_type_name(value)}."]
        if not self.allow_extra:
            declared = set(self.names())
            for name in values:
                if name not in declared:
                    problems[name] = ["Unknown parameter: the template does not declare it."]
        if problems:
            parts = "; ".join(
                f"{name}: {' '.join(messages).rstrip('.')}" for name, messages in problems.items()
            )
            raise InvalidRuntimeParameters(
                f"{what} do not match the template's declaration: {parts}.", fields={what: problems}
            )
        return result


def declaration(
    parameters: ParameterDeclaration | Iterable[Param] | Mapping[str, Any] | None,
    *,
    allow_extra: bool = False,
) -> ParameterDeclaration | None:
    """None for None (no declaration), else a :class:`ParameterDeclaration`."""
    if parameters is None:
        if allow_extra:
            raise InvalidTemplate("allow_extra_parameters needs declared parameters")
        return None
    return ParameterDeclaration.of(parameters, allow_extra=allow_extra)


__all__ = ["MISSING", "Param", "ParameterDeclaration", "declaration"]
