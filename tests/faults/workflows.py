"""Templates and tasks of the fault campaigns, and the effect ledger they write to.

Every task run writes a row to ``faults_run`` (its node, idempotency key, attempt, process and
worker generation) when it starts, and marks it finished when its effect is done; a listener
writes the message it was given. The ledger lives in the campaign's own database but is written
on a separate autocommit connection: like a payment or an e-mail, an effect is outside the
engine's transaction, so a kill between the effect and the engine's commit shows as a second
run. Imported by the driver and the bridge (``--import``); the worker imports the tasks by path.
"""

from __future__ import annotations

import os
import time
from typing import Any

from dagger_django import (
    DAGBuilderHelper,
    Dagger,
    ExecutorTask,
    KafkaCommandTask,
    KafkaListenerTask,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    TaskOperator,
    TriggerTask,
    TriggerTaskTemplateBuilder,
)

helper = DAGBuilderHelper(dagger_app=Dagger.app)

ORDERS = "faults_orders"  # commands out (the test plays the service that answers them)
READY = "faults_ready"  # answers in, to the listeners
STREAM = "faults_stream"  # the bridge campaign's steady stream
TOPICS = [ORDERS, READY, STREAM]

LEDGER = """
CREATE TABLE IF NOT EXISTS faults_run (
    id bigserial PRIMARY KEY,
    node_id text NOT NULL,
    task text NOT NULL,
    idem_key text NOT NULL,
    message text,
    pid integer NOT NULL,
    generation text NOT NULL,
    started_at double precision NOT NULL,
    finished_at double precision
);
CREATE INDEX IF NOT EXISTS faults_run_node ON faults_run (node_id);
"""

_conn: Any = None


def _ledger(sql: str, params: tuple[Any, ...]) -> Any:
    """Run ``sql`` on the ledger, reconnecting through a database outage (up to a minute).

    Effects are what the campaign counts, so a ledger write never gives up quietly: after a minute
    the task raises and the workflow shows it.
    """
    global _conn
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            if _conn is None or _conn.closed:
                _conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, connect_timeout=3)
            row = _conn.execute(sql, params).fetchone()
            return row[0] if row else None
        except psycopg.OperationalError:
            _conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_started(task: Any, *, message: str | None = None) -> int:
    return int(
        _ledger(
            "INSERT INTO faults_run (node_id, task, idem_key, message, pid, generation, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                str(task.id),
                str(task.task_name).rsplit(".", 1)[-1],
                str(task.idempotency_key),
                message,
                os.getpid(),
                os.environ.get("FAULTS_GENERATION", "?"),
                time.time(),
            ),
        )
    )


def run_finished(run_id: int) -> None:
    _ledger("UPDATE faults_run SET finished_at = %s WHERE id = %s RETURNING id", (time.time(), run_id))


# -- tasks --------------------------------------------------------------------------------------------------
class Effect(ExecutorTask):
    """An effect that takes a while: ``work`` seconds (``slow`` for the step named ``slow``)."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        run = run_started(self)
        slow = str(self.task_name).endswith("slow_executor_task")
        time.sleep(float(runtime_parameters.get("slow" if slow else "work", 0.0)))
        run_finished(run)


class Order(KafkaCommandTask):
    """Asks the 'order service' (the campaign) for an answer on READY."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        run = run_started(self)
        Dagger.topics[self.topic].send(value={"order_id": runtime_parameters["order_id"]})
        run_finished(run)


class Ready(KafkaListenerTask):
    """Waits for ``{"order_id": ..., "n": ...}``; done when the message says so (default: yes)."""

    correlatable_key = "order_id"

    def get_correlatable_key(self, payload: Any) -> Any:
        return ("order_id", payload["order_id"])

    def on_message(self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        payload = args[0]
        run_finished(run_started(self, message=str(payload.get("n"))))
        return bool(payload.get("done", True))


class Due(TriggerTask):
    """Fires at ``run_at``; records when."""

    def execute(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        run_finished(run_started(self))


# -- templates ----------------------------------------------------------------------------------------------
def _process(name: str, *builders: Any) -> Any:
    return helper.generic_process_builder(
        process_name=name, root_task=helper.build_and_link_tasks(list(builders))
    )


def _template(name: str, *processes: Any) -> Any:
    return helper.generic_template(
        template_name=name, root_process=helper.build_and_link_processes(list(processes))
    )


def _step(name: str) -> Any:
    return helper.generic_executor_task_builder(task_type=Effect, name=name)


@Dagger.register_template("FaultsChain")
def chain(name: str) -> Any:
    """Executors in a row; the middle one is the slow one a kill aims at."""
    return _template(name, _process("main", _step("a"), _step("slow"), _step("c")))


@Dagger.register_template("FaultsCommand")
def command(name: str) -> Any:
    """A command, its answer through Kafka and the bridge, then an executor."""
    order = helper.generic_command_task_builder(topic=ORDERS, task_type=Order, process_name="order")
    ready = helper.generic_listener_task_builder(topic=READY, task_type=Ready, process_name="order")
    return _template(name, _process("order", order, ready), _process("after", _step("done")))


@Dagger.register_template("FaultsTimer")
def timer(name: str) -> Any:
    """A trigger due at ``run_at``, then an executor."""
    due = (
        TriggerTaskTemplateBuilder(Dagger.app)
        .set_type(Due)
        .set_name("due")
        .set_time_to_execute_lookup_key("run_at")
    )
    return _template(name, _process("main", due, _step("after")))


@Dagger.register_template("FaultsParallel")
def parallel(name: str) -> Any:
    """Two copies of a slow executor joined, then one more."""
    group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 2, _step("slow").build())
    group.set_type(ParallelCompositeTask).set_name("fan").set_task_operator(TaskOperator.JOIN_ALL)
    group.set_next(_step("join").build())
    return _template(name, helper.generic_process_builder(process_name="main", root_task=group.build()))


@Dagger.register_template("FaultsStream")
def stream(name: str) -> Any:
    """A listener fed many messages (the bridge campaign), done when one says so."""
    ready = helper.generic_listener_task_builder(topic=STREAM, task_type=Ready, process_name="main")
    return _template(name, _process("main", ready))


#: Templates of the mixed run, in the order the driver cycles through them.
MIXED = ["FaultsChain", "FaultsCommand", "FaultsTimer", "FaultsParallel"]
