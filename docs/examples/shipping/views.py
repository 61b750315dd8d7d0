# after: shipping/views.py, what the Faust agent and cancel() did (route them in your urls.py)
import json

from django.http import JsonResponse

from dagger_django import Dagger


async def parcel_orders(request):
    """POST {"id": ..., "kg": ...}: the agent consumed these from the parcel_orders topic; a
    Kafka consumer of your own, a Celery task or a management command would do as well."""
    order = json.loads(request.body)
    instance = await Dagger.get_template("Parcel").acreate_instance(
        None, partition_key_lookup="parcel_id", parcel_id=order["id"], weight=order["kg"]
    )
    await Dagger.asubmit(instance)
    return JsonResponse({"workflow": str(instance.id)}, status=201)


async def cancel(parcel_workflow_id):
    instance = await Dagger.aget_instance(parcel_workflow_id)
    await instance.stop(runtime_parameters=instance.runtime_parameters, workflow_instance=instance)
