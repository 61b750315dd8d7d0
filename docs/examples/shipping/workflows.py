# after: shipping/workflows.py on dagger_django (shipping is an installed app)
import json
import logging

from dagger_django import DAGBuilderHelper, Dagger, ExecutorTask, KafkaCommandTask, KafkaListenerTask

logger = logging.getLogger(__name__)

# The Kafka servers are settings now (settings.DAGGER["KAFKA"], docs/bridge.md), and the store is
# the Django database: the Dagger(broker=..., store=..., aerospike_config=...) object goes.
# Dagger(...) with the old arguments would still work: those without effect warn and are ignored.
Dagger.create_topic("parcel_requests", key_type=bytes, value_type=str)
Dagger.create_topic("parcel_labels", key_type=bytes, value_type=bytes)


def ship_parcel(parcel_id, label):
    """Stands for the carrier's client."""
    logger.info("shipping parcel %s with label %s", parcel_id, label)


class RequestParcel(KafkaCommandTask[str, str]):
    async def execute(self, runtime_parameters, workflow_instance=None):
        body = {"parcel_id": runtime_parameters["parcel_id"], "weight": runtime_parameters["weight"]}
        await Dagger.topics[self.topic].send(value=json.dumps(body))


class LabelPrinted(KafkaListenerTask[str, str]):
    correlatable_key = "parcel_id"

    def get_correlatable_key(self, payload):
        return self.correlatable_key, json.loads(payload)["parcel_id"]

    async def on_message(self, runtime_parameters, *args, **kwargs):
        runtime_parameters["label"] = json.loads(args[0])["label"]
        return True


class Ship(ExecutorTask[str, str]):
    async def execute(self, runtime_parameters, workflow_instance=None):
        ship_parcel(runtime_parameters["parcel_id"], runtime_parameters["label"])
        runtime_parameters["shipped"] = True


@Dagger.register_template("Parcel")
def parcel(template_name):
    helper = DAGBuilderHelper(Dagger.app)
    label = helper.build_and_link_tasks(
        [
            helper.generic_command_task_builder(
                topic="parcel_requests", task_type=RequestParcel, process_name="label"
            ),
            helper.generic_listener_task_builder(
                topic="parcel_labels", task_type=LabelPrinted, process_name="label"
            ),
        ]
    )
    ship = helper.build_and_link_tasks([helper.generic_executor_task_builder(task_type=Ship, name="ship")])
    processes = helper.build_and_link_processes(
        [
            helper.generic_process_builder(process_name="label", root_task=label),
            helper.generic_process_builder(process_name="ship", root_task=ship),
        ]
    )
    return helper.generic_template(template_name=template_name, root_process=processes)
