"""A workflow that has something in every panel of its admin page, for the page tests and the
README's screenshot: a decision, a parallel group with a waiting listener and a pending trigger,
a later listener with a buffered message, and a dead letter keyed by its business key."""

from __future__ import annotations

from typing import Any

from dagger_django import (
    Dagger,
    DecisionTaskTemplateBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    Param,
    TriggerTaskTemplateBuilder,
)
from dagger_django.engine import messages

from .engine import builders as b
from .engine import tasks as t
from .engine import time_tasks as tt

#: Seconds from the engine's (frozen) clock until the reminder's timer is due.
REMIND_IN = 180


def order_template(name: str) -> Any:
    """main: check -> decide -> {express, standard}; fulfil: {wait_for_payment | remind | pack}
    -> ship -> wait_for_shipment (a listener on another topic) -> done."""
    decide = DecisionTaskTemplateBuilder(Dagger.app).set_type(t.PickByParameter).set_name("decide")
    decide.set_next(b.task(t.Record, "express").build())
    decide.set_next(b.task(t.Record, "standard").build())
    check = b.task(t.Record, "check")
    check.set_next(decide.build())

    payment = b.helper.generic_listener_task_builder(
        topic="orders", task_type=t.Waiter, process_name="wait_for_payment"
    ).build()
    remind = (
        TriggerTaskTemplateBuilder(Dagger.app)
        .set_type(tt.Remind)
        .set_name("remind")
        .set_time_to_execute_lookup_key("run_at")
        .build()
    )
    group = ParallelCompositeTaskTemplateBuilder(Dagger.app, 1, payment)
    group.add_parallel_task(remind)
    group.add_parallel_task(b.task(t.Record, "pack").build())
    group.set_type(ParallelCompositeTask).set_name("prepare").set_task_operator(b.JOIN_ALL)
    shipment = b.helper.generic_listener_task_builder(
        topic="shipments", task_type=t.Waiter, process_name="wait_for_shipment"
    )
    group.set_next(
        b.helper.build_and_link_tasks([b.task(t.Record, "ship"), shipment, b.task(t.Record, "done")])
    )

    return b.helper.generic_template(
        template_name=name,
        root_process=b.helper.build_and_link_processes(
            [b.process("main", check.build()), b.process("fulfil", group.build())]
        ),
        parameters=[
            Param("order_id", str, description="The shop's order number"),
            Param("branch", int, description="0: express, 1: standard"),
            Param("run_at", float),
            Param("note", str, default="<none>"),
        ],
    )


def waiting_order(name: str, dispatcher: Any, clock: Any, *, order_id: str = "o-1") -> Any:
    """A started workflow of :func:`order_template` that waits: for a payment (a listener), for
    its reminder (a timer due in ``REMIND_IN`` s), with a shipment message buffered for a
    listener not started yet, and a dead letter (no order id in it) under its business key."""
    template = order_template(name)
    workflow = template.create_instance(
        partition_key_lookup="order_id",
        submit_task=True,
        order_id=order_id,
        branch=0,
        run_at=clock.now().timestamp() + REMIND_IN,
        note='<b>"quoted"</b> & escaped',
    )
    dispatcher.drain()
    # Routing finds a topic's listeners in the registry: registered for the messages only.
    previous = Dagger.template_dags.get(name)
    Dagger.template_dags[name] = template
    try:
        messages.message_receive(topic="shipments", payload={"order_id": order_id, "carrier": "DHL"})
        messages.message_receive(topic="orders", payload={"paid": True}, key=order_id)
    finally:
        if previous is None:
            del Dagger.template_dags[name]
        else:
            Dagger.template_dags[name] = previous
    dispatcher.drain()
    return workflow
