"""Declared runtime parameters and a closed create body, through the facade and the HTTP API.

The template ``ApiTestWorkflow`` (tests/api/test_api.py) declares nothing; ``DeclaredOrder``
declares its parameters, and ``DeclaredOpenOrder`` also lets undeclared names through.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from dagger_django import DAGBuilderHelper, Dagger, ExecutorTask, InvalidRuntimeParameters, Param
from dagger_django.models import Workflow, WorkflowTemplate
from tests.api.test_api import BASE, TEMPLATE, assert_error, create

DECLARED = "DeclaredOrder"
DECLARED_OPEN = "DeclaredOpenOrder"


class DeclaredStep(ExecutorTask):
    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


def _build(template_name: str, **kwargs: Any) -> Any:
    helper = DAGBuilderHelper(dagger_app=Dagger.app)
    step = helper.generic_executor_task_builder(task_type=DeclaredStep, name="step")
    process = helper.generic_process_builder(
        process_name="main", root_task=helper.build_and_link_tasks([step])
    )
    return helper.generic_template(
        template_name=template_name, root_process=helper.build_and_link_processes([process]), **kwargs
    )


@Dagger.register_template(DECLARED)
def declared_order(template_name: str) -> Any:
    return _build(
        template_name,
        parameters=[
            Param("order_id", str),
            Param("amount", float, default=0.0),
            Param("note", str, required=False),
            Param("lines", list, default=[]),
        ],
    )


@Dagger.register_template(DECLARED_OPEN)
def declared_open_order(template_name: str) -> Any:
    return _build(template_name, parameters={"order_id": str}, allow_extra_parameters=True)


def post(api: APIClient, body: dict[str, Any]) -> Any:
    return create(api, body)


# --------------------------------------------------------------------------------------------------
# the facade
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_facade_fills_defaults_and_stores_the_declaration_with_the_version() -> None:
    instance = Dagger.get_template(DECLARED).create_instance(partition_key_lookup="order_id", order_id="o-1")

    assert instance.runtime_parameters == {"order_id": "o-1", "amount": 0.0, "lines": []}
    workflow = Workflow.objects.get(pk=instance.id)
    assert workflow.runtime_parameters == {"order_id": "o-1", "amount": 0.0, "lines": []}
    assert workflow.business_key == "o-1"
    stored = WorkflowTemplate.objects.get(name=DECLARED)
    assert stored.graph["parameters"]["params"][0] == {"name": "order_id", "type": "str", "required": True}
    assert stored.graph["parameters"]["allow_extra"] is False
    assert stored.digest == Dagger.get_template(DECLARED).digest()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "given, wrong",
    [
        ({}, {"order_id": ["This parameter is required (str)."]}),
        ({"order_id": 17}, {"order_id": ["Must be str, not int."]}),
        ({"order_id": "o", "amount": "12.5"}, {"amount": ["Must be float, not str."]}),
        (
            {"order_id": "o", "orderid": "o"},
            {"orderid": ["Unknown parameter: the template does not declare it."]},
        ),
    ],
    ids=["missing", "wrong-type", "wrong-type-optional", "unknown"],
)
def test_facade_refuses_parameters_that_do_not_match_and_stores_nothing(
    given: dict[str, Any], wrong: dict[str, list[str]]
) -> None:
    with pytest.raises(InvalidRuntimeParameters) as exc:
        Dagger.get_template(DECLARED).create_instance(**given)

    assert exc.value.fields == {"runtime_parameters": wrong}
    assert Workflow.objects.count() == 0
    assert WorkflowTemplate.objects.count() == 0


@pytest.mark.django_db
def test_facade_of_an_open_declaration_keeps_extra_names() -> None:
    instance = Dagger.get_template(DECLARED_OPEN).create_instance(order_id="o", extra={"a": 1})

    assert instance.runtime_parameters == {"order_id": "o", "extra": {"a": 1}}
    with pytest.raises(InvalidRuntimeParameters, match="order_id"):
        Dagger.get_template(DECLARED_OPEN).create_instance(extra=1)


@pytest.mark.django_db
def test_facade_of_an_undeclared_template_accepts_anything_as_before() -> None:
    instance = Dagger.get_template(TEMPLATE).create_instance(anything="goes", n=[1, {"x": None}])

    assert instance.runtime_parameters == {"anything": "goes", "n": [1, {"x": None}]}
    assert "parameters" not in WorkflowTemplate.objects.get(name=TEMPLATE).graph


#: (template, runtime parameters, partition_key_lookup naming none of them)
MISSING_KEY = [
    (TEMPLATE, {"orderid": "o-1"}, "order_id"),
    (DECLARED_OPEN, {"order_id": "o-1"}, "customer"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("template_name, given, lookup", MISSING_KEY, ids=["undeclared", "declared"])
def test_facade_partition_key_lookup_naming_a_missing_parameter_is_an_error(
    template_name: str, given: dict[str, Any], lookup: str
) -> None:
    with pytest.raises(InvalidRuntimeParameters, match=lookup) as exc:
        Dagger.get_template(template_name).create_instance(partition_key_lookup=lookup, **given)

    assert set(exc.value.fields or {}) == {"partition_key_lookup"}
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_a_default_can_be_the_partition_key() -> None:
    @Dagger.register_template("DeclaredDefaultKey")
    def keyed(template_name: str) -> Any:
        return _build(template_name, parameters=[Param("region", str, default="eu")])

    try:
        instance = Dagger.get_template("DeclaredDefaultKey").create_instance(partition_key_lookup="region")
        assert Workflow.objects.get(pk=instance.id).business_key == "eu"
    finally:
        Dagger.template_dags.pop("DeclaredDefaultKey", None)


# --------------------------------------------------------------------------------------------------
# the API
# --------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_api_creates_a_declared_workflow_with_its_defaults(api: APIClient) -> None:
    response = post(
        api,
        {
            "template": DECLARED,
            "partition_key_lookup": "order_id",
            "runtime_parameters": {"order_id": "A-1", "amount": 3},
        },
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["runtime_parameters"] == {"order_id": "A-1", "amount": 3, "lines": []}
    assert body["business_key"] == "A-1"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "given, names",
    [
        ({}, ["order_id"]),
        ({"order_id": None}, ["order_id"]),
        ({"order_id": "o", "amount": True, "lines": {}}, ["amount", "lines"]),
        ({"order_id": "o", "ordre": 1, "x": 2}, ["ordre", "x"]),
    ],
    ids=["missing", "null", "wrong-types", "unknown"],
)
def test_api_refuses_parameters_that_do_not_match_with_400_naming_them(
    api: APIClient, given: dict[str, Any], names: list[str]
) -> None:
    body = assert_error(
        post(api, {"template": DECLARED, "runtime_parameters": given}), 400, "invalid_runtime_parameters"
    )

    assert sorted(body["fields"]["runtime_parameters"]) == sorted(names)
    assert set(body["fields"]) == {"runtime_parameters"}
    for name in names:
        assert name in body["detail"]
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_api_without_runtime_parameters_for_a_declared_template_is_400(api: APIClient) -> None:
    body = assert_error(post(api, {"template": DECLARED}), 400, "invalid_runtime_parameters")

    assert body["fields"] == {"runtime_parameters": {"order_id": ["This parameter is required (str)."]}}


@pytest.mark.django_db
@pytest.mark.parametrize("template_name", [TEMPLATE, DECLARED])
def test_api_refuses_unknown_top_level_fields_naming_them(api: APIClient, template_name: str) -> None:
    body = assert_error(
        post(api, {"template": template_name, "runtim_parameters": {"order_id": "o"}, "submit": True}),
        400,
        "invalid",
    )

    assert set(body["fields"]) == {"runtim_parameters", "submit"}
    assert "runtim_parameters" in body["detail"] and "submit" in body["detail"]
    assert "runtime_parameters" in body["fields"]["runtim_parameters"][0], "the message lists the fields"
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("template_name, given, lookup", MISSING_KEY, ids=["undeclared", "declared"])
def test_api_partition_key_lookup_naming_a_missing_parameter_is_400(
    api: APIClient, template_name: str, given: dict[str, Any], lookup: str
) -> None:
    body = assert_error(
        post(api, {"template": template_name, "partition_key_lookup": lookup, "runtime_parameters": given}),
        400,
        "invalid_runtime_parameters",
    )

    assert list(body["fields"]) == ["partition_key_lookup"]
    assert "partition_key_lookup" in body["detail"] and lookup in body["detail"]
    assert Workflow.objects.count() == 0


@pytest.mark.django_db
def test_api_template_detail_shows_the_declaration(api: APIClient) -> None:
    declared = api.get(f"{BASE}/templates/{DECLARED}/").json()
    plain = api.get(f"{BASE}/templates/{TEMPLATE}/").json()

    assert declared["parameters"] == {
        "params": [
            {"name": "order_id", "type": "str", "required": True},
            {"name": "amount", "type": "float", "required": False, "default": 0.0},
            {"name": "note", "type": "str", "required": False},
            {"name": "lines", "type": "list", "required": False, "default": []},
        ],
        "allow_extra": False,
    }
    assert declared["graph"]["parameters"] == declared["parameters"]
    assert plain["parameters"] is None
    assert "parameters" not in plain["graph"]


@pytest.mark.django_db
def test_api_error_details_read_as_documented(api: APIClient) -> None:
    """The examples of docs/api.md, word for word."""
    fields = "template, runtime_parameters, id, partition_key_lookup"
    typo = assert_error(post(api, {"template": DECLARED, "runtim_parameters": {}}), 400, "invalid")
    assert typo["detail"] == f"Invalid input: runtim_parameters: Unknown field; the fields are: {fields}."

    mismatch = assert_error(
        post(api, {"template": DECLARED, "runtime_parameters": {"amount": "12"}}),
        400,
        "invalid_runtime_parameters",
    )
    assert mismatch["detail"] == (
        "runtime_parameters do not match the template's declaration: "
        "order_id: This parameter is required (str); amount: Must be float, not str."
    )


def test_api_patch_keeps_declared_types_and_lets_new_names_in(api: APIClient) -> None:
    """An operator's change of a running workflow's parameters keeps each declared parameter of
    its declared type (a 400 naming it, nothing changed); names the template does not declare may
    be added, as tasks add them at run time."""
    created = post(api, {"template": DECLARED, "runtime_parameters": {"order_id": "p-1", "amount": 2.5}})
    assert created.status_code == 201, created.content
    wf_id = created.json()["id"]
    url = f"{BASE}/workflows/{wf_id}/runtime-parameters/"
    before = Workflow.objects.get(pk=wf_id).runtime_parameters

    wrong = api.patch(url, {"amount": "a lot", "lines": {"x": 1}, "note": "fine"}, format="json")
    body = assert_error(wrong, 400, "invalid_runtime_parameters")
    assert set(body["fields"]["runtime_parameters"]) == {"amount", "lines"}
    assert "Must be float, not str" in body["detail"]
    assert Workflow.objects.get(pk=wf_id).runtime_parameters == before

    fixed = api.patch(url, {"amount": 3.0, "note": "gift", "carrier": "dhl"}, format="json")
    assert fixed.status_code == 200, fixed.content
    stored = Workflow.objects.get(pk=wf_id).runtime_parameters
    assert (stored["amount"], stored["note"], stored["carrier"]) == (3.0, "gift", "dhl")
