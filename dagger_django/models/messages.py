"""Messages in and out: the correlation index, the inbox with its deliveries, and the outbox.

* :class:`Subscription`: one row per listener node, the key it waits under. Looked up by
  ``(topic, key_name, key_value)`` for every incoming message.
* :class:`InboxMessage`: every message that reached the engine (from Kafka or HTTP) with what
  became of it. Its unique keys are the deduplication: a message routed twice has one effect.
* :class:`Delivery`: one message for one listener node. The bridge only writes these; a worker
  runs the listener's ``on_message`` for them under the rules of ``dagger_django.engine.messages``.
* :class:`OutboxMessage`: a Kafka message written in the transaction that decided to send it and
  relayed to Kafka after that transaction committed.

See ``docs/correlation.md``.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.db import models

from .status import (
    DELIVERY_TRANSITIONS,
    INBOX_TRANSITIONS,
    OPEN_DELIVERY,
    OUTBOX_TRANSITIONS,
    DeliveryStatus,
    InboxStatus,
    OutboxKind,
    OutboxStatus,
    Table,
)
from .workflows import Workflow

__all__ = [
    "OPEN_DELIVERY",
    "Delivery",
    "DeliveryStatus",
    "InboxMessage",
    "InboxStatus",
    "OutboxKind",
    "OutboxMessage",
    "OutboxStatus",
    "Subscription",
]


class Subscription(models.Model):
    """A listener node waiting for messages on ``topic`` whose key ``key_name`` equals ``key_value``.

    Created with the listener node (so a message that arrives before the listener starts finds
    it and is kept), re-keyed when the runtime parameter it correlates on changes, and removed
    when the listener can take no more messages. ``key_value`` is the normalised text of the
    value (``engine.correlation.correlation_value``); NULL while the parameter is unset, which
    matches nothing.
    """

    id = models.BigAutoField(primary_key=True)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="+")
    node_id = models.UUIDField(unique=True)
    topic = models.CharField(max_length=255)
    key_name = models.CharField(max_length=200)
    key_value = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - NULL: not keyed
    #: The listener class's ``match_only_one`` when the row was written.
    match_only_one = models.BooleanField(default=False)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(
                fields=["topic", "key_name", "key_value"],
                name="dagger_sub_lookup",
                condition=models.Q(key_value__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.topic}: {self.key_name}={self.key_value}"


class InboxMessage(models.Model):
    """A message received from Kafka or over HTTP, with its outcome.

    Deduplication: a message with an id (HTTP ``message_id``, or the ``dagger-message-id`` header
    our own outbox sets) is unique by ``(topic, message_id)``; a Kafka message without one by
    ``(source, topic, incarnation, partition, offset)``, where ``incarnation`` tells a recreated
    or moved topic from the old one (its offsets start again at 0). Invalid messages keep their
    raw bytes (``raw``, and ``raw_key`` when the key is not text) and the reason, so they can be
    fixed and replayed.
    """

    #: Allowed status changes (``models.status.transition`` writes them).
    STATUS_TRANSITIONS: ClassVar[Table] = INBOX_TRANSITIONS

    id = models.BigAutoField(primary_key=True)
    source = models.CharField(max_length=16)
    topic = models.CharField(max_length=255)
    #: ``<cluster id>/<topic id>`` of the topic the offset belongs to ('' when unknown; HTTP).
    incarnation = models.CharField(max_length=100, blank=True, default="")
    partition = models.IntegerField(null=True, blank=True)
    offset = models.BigIntegerField(null=True, blank=True)
    message_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL: none given
    key = models.TextField(null=True, blank=True)  # noqa: DJ001 - the Kafka key as text; NULL: no key
    #: The key's bytes when they are not text the database takes (not UTF-8, a NUL).
    raw_key = models.BinaryField(null=True, blank=True)
    payload = models.JSONField(null=True, blank=True)
    raw = models.BinaryField(null=True, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=InboxStatus.choices)
    reason = models.CharField(max_length=32, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    #: How many listener nodes the message was delivered to (deliveries created).
    matched = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    #: The last replay made by a person (``messages.message_replay``): who, why and when.
    replayed_by = models.CharField(max_length=150, blank=True, default="")
    replay_reason = models.TextField(blank=True, default="")
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "topic", "incarnation", "partition", "offset"],
                name="dagger_inbox_position_uniq",
                condition=models.Q(offset__isnull=False, message_id__isnull=True),
            ),
            models.UniqueConstraint(
                fields=["topic", "message_id"],
                name="dagger_inbox_message_id_uniq",
                condition=models.Q(message_id__isnull=False),
            ),
        ]
        indexes = [models.Index(fields=["status", "received_at"], name="dagger_inbox_status")]

    def __str__(self) -> str:
        where = f"{self.partition}@{self.offset}" if self.offset is not None else (self.message_id or self.pk)
        return f"{self.topic} {where} ({self.status})"


class Delivery(models.Model):
    """One message for one listener node, handled in order per node by a worker."""

    #: Allowed status changes (``models.status.transition`` writes them).
    STATUS_TRANSITIONS: ClassVar[Table] = DELIVERY_TRANSITIONS

    id = models.BigAutoField(primary_key=True)
    message = models.ForeignKey(InboxMessage, on_delete=models.CASCADE, related_name="deliveries")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="+")
    node_id = models.UUIDField()
    status = models.CharField(max_length=12, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    lease = models.CharField(max_length=64, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    #: A buffered delivery is dropped (EXPIRED) after this time.
    expires_at = models.DateTimeField(null=True, blank=True)
    #: A delivery whose ``on_message`` raised is tried again from this time (retry policy).
    available_at = models.DateTimeField(null=True, blank=True)
    #: A PENDING delivery waiting in the queue is sent again from this time (message sweep);
    #: ``redispatches`` counts those re-sends since its last claim, for the backoff.
    redispatch_at = models.DateTimeField(null=True, blank=True)
    redispatches = models.PositiveSmallIntegerField(default=0)
    #: What ``on_message`` returned, or why the delivery was ignored or failed.
    outcome = models.CharField(max_length=64, blank=True, default="")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(
                fields=["node_id", "id"],
                name="dagger_delivery_open",
                condition=models.Q(status__in=OPEN_DELIVERY),
            ),
            models.Index(
                fields=["updated_at"],
                name="dagger_delivery_stale",
                condition=models.Q(status__in=[DeliveryStatus.PENDING, DeliveryStatus.CLAIMED]),
            ),
            models.Index(
                fields=["expires_at"],
                name="dagger_delivery_buffered",
                condition=models.Q(status=DeliveryStatus.BUFFERED),
            ),
        ]

    def __str__(self) -> str:
        return f"message {self.message_id} -> node {self.node_id} ({self.status})"


class OutboxMessage(models.Model):
    """A Kafka message to send, written in the transaction that decided to send it.

    The relay (``engine.outbox.outbox_relay``) claims pending rows for a lease
    (``claimed_until``), produces them with no transaction open and records the outcome: SENT, or
    back to PENDING with ``available_at`` pushed back, or DEAD once ``OUTBOX_MAX_ATTEMPTS`` failed.
    A crash between producing and recording sends the row again after its lease, so receivers
    must tolerate a duplicate: every message carries ``message_id`` in its ``dagger-message-id``
    header (our own inbox dedupes by it). Rows of one ``(topic, key)`` are sent in id order.
    """

    #: Allowed status changes (``models.status.transition`` writes them).
    STATUS_TRANSITIONS: ClassVar[Table] = OUTBOX_TRANSITIONS

    id = models.BigAutoField(primary_key=True)
    message_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=16, choices=OutboxKind.choices)
    topic = models.CharField(max_length=255)
    key = models.BinaryField(null=True, blank=True)
    value = models.BinaryField(null=True, blank=True)
    #: ``[[name, text], ...]``; bytes that are not UTF-8 are stored as ``{"b64": ...}``.
    headers = models.JSONField(default=list, blank=True)
    workflow_id = models.UUIDField(null=True, blank=True)
    node_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField()
    status = models.CharField(max_length=8, choices=OutboxStatus.choices, default=OutboxStatus.PENDING)
    #: A pending row is not produced before this time (retry back-off); NULL: at once.
    available_at = models.DateTimeField(null=True, blank=True)
    #: A relay is producing the row until then; afterwards another relay may claim it again.
    claimed_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    #: Produce attempts that got an answer: failures while the broker answered, and the one
    #: that succeeded (an outage counts none). OUTBOX_MAX_ATTEMPTS failures make the row DEAD.
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["id"], name="dagger_outbox_pending", condition=models.Q(status=OutboxStatus.PENDING)
            ),
            # "is an older row of this key still unsent?" for every claim (per-key order)
            models.Index(
                fields=["topic", "key", "id"],
                name="dagger_outbox_key_unsent",
                condition=models.Q(status__in=[OutboxStatus.PENDING, OutboxStatus.DEAD]),
            ),
            models.Index(fields=["workflow_id"], name="dagger_outbox_workflow"),
            # the retention sweep's oldest sent rows (engine/outbox.py outbox_prune)
            models.Index(
                fields=["sent_at"], name="dagger_outbox_sent", condition=models.Q(status=OutboxStatus.SENT)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.topic} ({self.status})"
