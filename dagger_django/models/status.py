from __future__ import annotations

from django.db import models


class Status(models.TextChoices):
    """Status of a workflow or a node; the names and values of the original ``TaskStatusEnum``."""

    NOT_STARTED = "NOT_STARTED", "Not started"
    SUBMITTED = "SUBMITTED", "Submitted"
    EXECUTING = "EXECUTING", "Executing"
    COMPLETED = "COMPLETED", "Completed"
    FAILURE = "FAILURE", "Failure"
    SKIPPED = "SKIPPED", "Skipped"
    STOPPED = "STOPPED", "Stopped"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILURE, Status.SKIPPED, Status.STOPPED})
ACTIVE = frozenset({Status.SUBMITTED, Status.EXECUTING})


class NodeType(models.TextChoices):
    SUB_DAG = "SUB_DAG", "Process"
    PARALLEL_COMPOSITE = "PARALLEL_COMPOSITE", "Parallel group"
    LEAF = "LEAF", "Task"


class NodeKind(models.TextChoices):
    PROCESS = "process", "Process"
    PARALLEL = "parallel", "Parallel group"
    EXECUTOR = "executor", "Executor"
    COMMAND = "command", "Kafka command"
    LISTENER = "listener", "Kafka listener"
    DECISION = "decision", "Decision"
    TRIGGER = "trigger", "Trigger"
    INTERVAL = "interval", "Interval"
    MONITOR = "monitor", "Monitor"


#: Kinds whose work is user code run by a worker (claimed, executed outside the lock, applied).
WORKER_KINDS = frozenset({NodeKind.EXECUTOR, NodeKind.COMMAND, NodeKind.DECISION})


class StopHook(models.TextChoices):
    """Where a node's ``stop`` hook stands (``Node.stop_hook``); "" when it has none to run."""

    NONE = "", "None"
    PENDING = "pending", "Pending"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class TimerPurpose(models.TextChoices):
    RETRY = "retry", "Retry with backoff"
    TRIGGER = "trigger", "Trigger time"
    INTERVAL = "interval", "Interval poll"
    MONITOR = "monitor", "Monitor deadline"
    DEADLINE = "deadline", "Process max run duration"
    BUFFER_EXPIRY = "buffer_expiry", "Buffered message expiry"


class TimerStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    FIRED = "FIRED", "Fired"
    CANCELLED = "CANCELLED", "Cancelled"
