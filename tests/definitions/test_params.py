"""Declared runtime parameters: the declaration, its checks and its place in the graph (no database)."""

from __future__ import annotations

from typing import Any

import pytest

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    DefaultTemplateBuilder,
    ExecutorTask,
    InvalidRuntimeParameters,
    InvalidTemplate,
    Param,
    ParameterDeclaration,
)


class Work(ExecutorTask[str, str]):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


def template(**kwargs: Any) -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    task = helper.generic_executor_task_builder(task_type=Work, name="work")
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks([task])
    )
    return helper.generic_template(
        template_name="ParamsWorkflow", root_process=helper.build_and_link_processes([process]), **kwargs
    )


ORDER = [
    Param("order_id", str),
    Param("amount", float, default=0.0),
    Param("note", str, required=False),
    Param("express", bool, default=False),
    Param("items", list, default=[]),
]


def problems(exc: pytest.ExceptionInfo[InvalidRuntimeParameters]) -> dict[str, list[str]]:
    assert exc.value.fields is not None
    return dict(exc.value.fields["runtime_parameters"])


# --------------------------------------------------------------------------------------------------
# the declaration
# --------------------------------------------------------------------------------------------------
def test_required_defaults_to_true_without_a_default_and_to_false_with_one() -> None:
    assert Param("a", str).required is True
    assert Param("a", str, default="x").required is False
    assert Param("a", str, required=False).required is False
    assert Param("a").type_name == "any"
    assert Param("a", "int").type_name == "int"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: Param("a", str, required=True, default="x"), "cannot have a default"),
        (lambda: Param("a", set), "is not one of"),
        (lambda: Param("", str), "non-empty"),
        (lambda: Param("a", int, default="1"), "is not of type int"),
        (lambda: Param("a", int, default=True), "is not of type int"),
        (lambda: Param("a", "any", default={1, 2}), "not JSON"),
        (lambda: ParameterDeclaration.of([Param("a"), Param("a")]), "declared twice"),
        (lambda: ParameterDeclaration.of(["a"]), "Param objects"),
        (lambda: ParameterDeclaration.of("a"), "list of Param or a dict"),
        (lambda: ParameterDeclaration.of({"a": {"type": str, "requried": True}}), "unknown settings"),
    ],
)
def test_a_malformed_declaration_is_an_invalid_template(make: Any, words: str) -> None:
    with pytest.raises(InvalidTemplate, match=words):
        make()


def test_the_dict_form_equals_the_list_form() -> None:
    as_dict = ParameterDeclaration.of(
        {
            "order_id": str,
            "amount": {"type": float, "default": 0.0},
            "note": {"type": "str", "required": False},
            "express": {"type": bool, "default": False},
            "items": {"type": list, "default": []},
        }
    )
    assert as_dict == ParameterDeclaration.of(ORDER)
    assert as_dict.to_json() == ParameterDeclaration.of(ORDER).to_json()


def test_apply_fills_defaults_and_leaves_optional_ones_without_a_default_out() -> None:
    declared = ParameterDeclaration.of(ORDER)
    given = {"order_id": "o-1", "amount": 3}

    result = declared.apply(given)

    assert result == {"order_id": "o-1", "amount": 3, "express": False, "items": []}
    assert given == {"order_id": "o-1", "amount": 3}, "the given dict is not changed"
    result["items"].append(1)
    assert declared.apply(given)["items"] == [], "a default is copied, never shared"


def test_apply_names_every_missing_wrong_and_unknown_parameter_at_once() -> None:
    declared = ParameterDeclaration.of(ORDER)

    with pytest.raises(InvalidRuntimeParameters) as exc:
        declared.apply({"amount": "12", "express": 1, "orderid": "o-1"})

    assert problems(exc) == {
        "order_id": ["This parameter is required (str)."],
        "amount": ["Must be float, not str."],
        "express": ["Must be bool, not int."],
        "orderid": ["Unknown parameter: the template does not declare it."],
    }
    for name in ("order_id", "amount", "express", "orderid"):
        assert name in str(exc.value)


@pytest.mark.parametrize(
    "type_, good, bad",
    [
        (str, ["", "x"], [1, None, True, ["x"]]),
        (int, [0, -3, 10**20], [1.0, True, "1", None]),
        (float, [0, 1.5, -2], [True, "1.5", None]),
        (bool, [True, False], [0, 1, "true", None]),
        (dict, [{}, {"a": 1}], [[], "x", None]),
        (list, [[], [1], (1, 2)], [{}, "x", None]),
        ("any", [None, 1, "x", [], {}, True], []),
    ],
)
def test_types_are_json_types(type_: Any, good: list[Any], bad: list[Any]) -> None:
    declared = ParameterDeclaration.of([Param("v", type_)])
    for value in good:
        assert declared.apply({"v": value}) == {"v": value}
    for value in bad:
        with pytest.raises(InvalidRuntimeParameters):
            declared.apply({"v": value})


def test_allow_extra_lets_undeclared_names_through_but_still_checks_declared_ones() -> None:
    declared = ParameterDeclaration.of([Param("order_id", str)], allow_extra=True)

    assert declared.apply({"order_id": "o", "anything": [1]}) == {"order_id": "o", "anything": [1]}
    with pytest.raises(InvalidRuntimeParameters) as exc:
        declared.apply({"anything": 1})
    assert problems(exc) == {"order_id": ["This parameter is required (str)."]}


# --------------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------------
def test_a_template_without_a_declaration_has_none_and_its_graph_has_no_parameters_key() -> None:
    plain = template()

    assert plain.parameters is None
    assert "parameters" not in plain.to_graph()


def test_the_declaration_is_in_the_graph_and_changes_the_digest() -> None:
    plain = template()
    declared = template(parameters=ORDER)
    open_ = template(parameters=ORDER, allow_extra_parameters=True)

    assert declared.to_graph()["parameters"] == {
        "params": [
            {"name": "order_id", "type": "str", "required": True},
            {"name": "amount", "type": "float", "required": False, "default": 0.0},
            {"name": "note", "type": "str", "required": False},
            {"name": "express", "type": "bool", "required": False, "default": False},
            {"name": "items", "type": "list", "required": False, "default": []},
        ],
        "allow_extra": False,
    }
    assert open_.to_graph()["parameters"]["allow_extra"] is True
    assert len({plain.digest(), declared.digest(), open_.digest()}) == 3
    assert template(parameters=ORDER).digest() == declared.digest()
    assert template().digest() == plain.digest()


def test_the_builder_declares_parameters_like_the_helper() -> None:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    task = helper.generic_executor_task_builder(task_type=Work, name="work")
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks([task])
    )
    built = (
        DefaultTemplateBuilder(Dagger.app)
        .set_name("ParamsWorkflow")
        .set_root(helper.build_and_link_processes([process]))
        .set_parameters({"order_id": str, "amount": {"type": float, "default": 0.0}}, allow_extra=True)
        .build()
    )

    assert built.parameters == ParameterDeclaration.of(
        [Param("order_id", str), Param("amount", float, default=0.0)], allow_extra=True
    )


def test_allow_extra_parameters_without_parameters_is_an_invalid_template() -> None:
    with pytest.raises(InvalidTemplate, match="needs declared parameters"):
        template(allow_extra_parameters=True)
