"""The ORM side of dagger_django: templates, workflows, their nodes, timers and history.

Status changes go through :mod:`dagger_django.engine` only; nothing else writes ``status``.
Workflow and node statuses through ``engine.state.WorkflowState``; the statuses of deliveries,
inbox rows, timers and outbox rows through :func:`dagger_django.models.status.transition`.
"""

from .history import HistoryRecord
from .messages import (
    Delivery,
    DeliveryStatus,
    InboxMessage,
    InboxStatus,
    OutboxKind,
    OutboxMessage,
    OutboxStatus,
    Subscription,
)
from .status import NodeKind, NodeType, Status, StopHook, TimerPurpose, TimerStatus
from .templates import WorkflowTemplate
from .timers import Timer
from .workflows import NODE_FIELDS, Node, NodePage, Workflow

__all__ = [
    "Delivery",
    "DeliveryStatus",
    "HistoryRecord",
    "InboxMessage",
    "InboxStatus",
    "OutboxKind",
    "OutboxMessage",
    "OutboxStatus",
    "Subscription",
    "NodeKind",
    "NodeType",
    "NODE_FIELDS",
    "Node",
    "NodePage",
    "Status",
    "StopHook",
    "Timer",
    "TimerPurpose",
    "TimerStatus",
    "Workflow",
    "WorkflowTemplate",
]
