"""Start the demo orders so a newcomer sees each kind of step move: ``python manage.py dagger_demo``.

One order of each kind in config/demo/guide.py (ORDERS): shipped (a parallel group, then a timer),
refunded (a decision), declined (a failure to fix and retry), paid by bank transfer (a listener
waiting for an event). ``make run`` runs this once the worker, beat and web server are up.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from config.demo.guide import ORDERS, first_free_order_number, order_parameters
from config.demo.workflows import TEMPLATE
from dagger_django import Dagger


class Command(BaseCommand):
    help = "Create and start the demo orders (DemoOrderWorkflow), one of each kind."

    def handle(self, *args: Any, **options: Any) -> None:
        template = Dagger.get_template(TEMPLATE)
        number = first_free_order_number()
        for offset, order in enumerate(ORDERS):
            order_id = f"order-{number + offset}"
            instance = template.create_instance(
                partition_key_lookup="order_id",
                submit_task=True,
                **order_parameters(order, order_id=order_id),
            )
            self.stdout.write(f"started {TEMPLATE} {instance.id} for {order_id}: {order.shows}")
