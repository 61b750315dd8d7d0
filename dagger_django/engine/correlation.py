"""Correlation of incoming messages to waiting listeners (filled in by the Kafka issue).

The walker and the services call these hooks at fixed points of a transition; each one works on
the in-memory :class:`~.state.WorkflowState` and may add rows to write at flush.
"""

from __future__ import annotations

from ..models import Node
from .state import WorkflowState


def listener_started(state: WorkflowState, node: Node) -> None:
    """A listener began waiting: deliver a message buffered for it, if any."""


def parameters_changed(state: WorkflowState, *, changed: list[str], removed: list[str]) -> None:
    """Runtime parameters changed: re-key the subscriptions of the workflow's listeners."""


def before_flush(state: WorkflowState) -> None:
    """Remove the subscriptions of nodes that ended in this transition."""
