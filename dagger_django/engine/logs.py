"""How the engine's log lines about a node name it: by its workflow's id and business key.

Each such line says both in its text (``workflow <id> (business key <key>)``) and carries them
in the record's ``extra`` (``dagger_workflow_id``, ``dagger_business_key``, ``dagger_node``), so
a search by either finds it and a structured formatter can index them.
"""

from __future__ import annotations

from typing import Any


def extra(workflow_id: Any, business_key: str | None, node: str | None = None) -> dict[str, Any]:
    """The ``extra`` of a log line about ``node`` of a workflow."""
    return {
        "dagger_workflow_id": str(workflow_id),
        "dagger_business_key": business_key,
        "dagger_node": node,
    }


def work_key(work: Any) -> str | None:
    """The business key of the workflow a claimed :class:`~dagger_django.engine.txn.Work` is of."""
    return getattr(getattr(work, "workflow", None), "business_key", None)


def of_work(work: Any) -> dict[str, Any]:
    """The ``extra`` of a log line about a claimed node (``Work``)."""
    return extra(work.workflow_id, work_key(work), work.name)


def key_of(workflow_id: Any) -> str | None:
    """The business key of a workflow, read for a log line written where only its id is known
    (an error path: a failure to read it gives None, never an exception)."""
    from ..models import Workflow

    try:
        return Workflow.objects.filter(pk=workflow_id).values_list("business_key", flat=True).first()
    except Exception:  # noqa: BLE001 - a log line must not fail its error path
        return None
