# The ported module, run on the real engine: the order arrives at the view, the command goes to
# the outbox, the carrier's label arrives as a message, the parcel ships; cancel() stops one.
import json

import pytest
from asgiref.sync import async_to_sync
from django.test import RequestFactory

from dagger_django.engine.messages import message_receive
from dagger_django.engine.selectors import workflow_detail_get
from dagger_django.models import OutboxMessage
from dagger_django.testing import engine_under_test

from .views import cancel, parcel_orders


def _order(parcel_id):
    request = RequestFactory().post(
        "/parcels/", {"id": parcel_id, "kg": 2.5}, content_type="application/json"
    )
    response = async_to_sync(parcel_orders)(request)
    assert response.status_code == 201
    return json.loads(response.content)["workflow"]


@pytest.mark.django_db(transaction=True)
def test_a_parcel_is_requested_labelled_and_shipped():
    with engine_under_test() as (dispatcher, clock):
        workflow_id = _order("p-1")
        dispatcher.drain()  # the command is sent; the listener waits for the label
        assert workflow_detail_get(workflow_id=workflow_id).status == "EXECUTING"
        sent = OutboxMessage.objects.get(topic="parcel_requests")
        assert json.loads(bytes(sent.value)) == {"parcel_id": "p-1", "weight": 2.5}

        routed = message_receive(topic="parcel_labels", payload={"parcel_id": "p-1", "label": "L-77"})
        assert routed.matched == 1
        dispatcher.drain()

    workflow = workflow_detail_get(workflow_id=workflow_id)
    assert workflow.status == "COMPLETED"
    assert workflow.runtime_parameters["label"] == "L-77" and workflow.runtime_parameters["shipped"] is True


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_a_parcel_waiting_for_its_label():
    with engine_under_test() as (dispatcher, clock):
        workflow_id = _order("p-2")
        dispatcher.drain()
        async_to_sync(cancel)(workflow_id)
        dispatcher.drain()
    assert workflow_detail_get(workflow_id=workflow_id).status == "STOPPED"
