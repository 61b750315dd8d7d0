"""The demo project's own page: ``/``, a map of what runs (templates/demo/index.html)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dagger_django.engine.selectors import workflow_list

from .guide import ORDERS
from .workflows import TEMPLATE, TRANSFER_TOPIC

#: How many of the latest demo orders the page lists.
LATEST = 20


def index(request: HttpRequest) -> HttpResponse:
    """Links to the admin, the API and its docs; the latest demo orders for a user who may see
    workflows (``dagger_django.view_workflow``), nothing of them for anyone else."""
    can_view = request.user.has_perm("dagger_django.view_workflow")
    orders = list(workflow_list(template=TEMPLATE)[:LATEST]) if can_view else []
    context = {
        "demo_template": TEMPLATE,
        "transfer_topic": TRANSFER_TOPIC,
        "kinds": [order.shows for order in ORDERS],
        "can_view": can_view,
        "orders": orders,
    }
    return render(request, "demo/index.html", context)
