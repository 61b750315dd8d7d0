"""Outgoing notifications, sent after the transaction that made the change has committed.

Receivers get ``workflow`` (a :class:`~dagger_django.models.Workflow`) and, for task signals,
``node`` (a :class:`~dagger_django.models.Node`). They only announce: a receiver that raises is
logged and changes nothing already stored.
"""

from django.dispatch import Signal

#: Any workflow status change: kwargs workflow, from_status, to_status.
workflow_status_changed = Signal()
workflow_completed = Signal()
workflow_failed = Signal()
workflow_stopped = Signal()
#: Any node status change: kwargs workflow, node, from_status, to_status.
task_status_changed = Signal()
task_completed = Signal()
task_failed = Signal()
