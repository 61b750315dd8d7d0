"""Start demo workflows so a newcomer sees one move: ``python manage.py dagger_demo``."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand

from dagger_django import Dagger


class Command(BaseCommand):
    help = "Create and submit demo order workflows (DemoOrderWorkflow)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--count", type=int, default=2, help="How many workflows to start (default 2).")

    def handle(self, *args: Any, count: int, **options: Any) -> None:
        template = Dagger.get_template("DemoOrderWorkflow")
        for i in range(count):
            order_id = f"order-{uuid.uuid4().hex[:8]}"
            instance = template.create_instance(
                partition_key_lookup="order_id",
                submit_task=True,
                order_id=order_id,
                amount=42 + i,
                out_of_stock=(i % 2 == 1),
            )
            self.stdout.write(f"started DemoOrderWorkflow {instance.id} for {order_id}")
