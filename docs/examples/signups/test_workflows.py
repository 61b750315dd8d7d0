# signups/test_workflows.py: run with pytest and pytest-django, on your test database
import pytest

from dagger_django import Dagger
from dagger_django.engine.selectors import workflow_detail_get
from dagger_django.engine.services import workflow_retry, workflow_update_parameters
from dagger_django.testing import engine_under_test


@pytest.mark.django_db(transaction=True)  # the engine hands work on at commit
def test_a_signup_creates_the_account_then_sends_the_welcome():
    with engine_under_test() as (dispatcher, clock):
        wf = Dagger.get_template("Signup").create_instance(
            partition_key_lookup="email", submit_task=True, email="ada@example.com"
        )
        dispatcher.drain()  # runs every task queued, in this process

    workflow = workflow_detail_get(workflow_id=wf.id)
    assert workflow.status == "COMPLETED"
    assert workflow.business_key == "ada@example.com"
    assert workflow.runtime_parameters["account_id"] == "acct-ada"
    assert workflow.runtime_parameters["welcome_sent_to"] == "ada@example.com"


@pytest.mark.django_db(transaction=True)
def test_a_bad_address_halts_the_signup_until_it_is_fixed_and_retried():
    with engine_under_test() as (dispatcher, clock):
        wf = Dagger.get_template("Signup").create_instance(
            partition_key_lookup="email", submit_task=True, email="ada.example.com"
        )
        dispatcher.drain()
        workflow = workflow_detail_get(workflow_id=wf.id)
        assert workflow.status == "FAILURE"
        assert "not an email address" in workflow.error

        # What an operator does: PATCH runtime-parameters/, then Retry (admin) or POST retry/.
        workflow_update_parameters(workflow_id=wf.id, changes={"email": "ada@example.com"})
        workflow_retry(workflow_id=wf.id, actor="test")
        dispatcher.drain()

    assert workflow_detail_get(workflow_id=wf.id).status == "COMPLETED"
