"""Correlation: which listener nodes a message is for, and keeping that index current.

The index is the :class:`~dagger_django.models.Subscription` table: one row per listener node,
holding the topic, the name of the runtime parameter the listener correlates on
(``correlatable_key``) and that parameter's current value, normalised to text by
:func:`correlation_value`. A message is for every row whose ``(topic, key name, key value)``
equals one of the ``(name, value)`` pairs that the topic's listener classes extract from its
payload (the original matched on the value and the topic only, so two listener types on one
topic with equal values collided).

Lifecycle of a row (the walker and the services call the three hooks at the end of this module):

* written when the workflow is **created**, for every listener node, so that a message that
  arrives before its listener starts is kept for it (``engine.messages`` buffers it);
* re-keyed in the same transaction whenever the parameter changes: from a task, from
  ``on_message`` or through the API;
* deleted when the listener can take no more messages: it ended COMPLETED (unless it has
  ``reprocess_on_message``), SKIPPED (unless it has ``allow_skip_to``) or STOPPED. A FAILURE
  listener keeps its row, because retrying the workflow makes it wait again; and deleted, all
  of them, when the workflow ends COMPLETED, STOPPED or SKIPPED.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.db.models import Q

from ..definitions import payloads
from ..definitions.registry import Dagger
from ..definitions.tasks import ITask
from ..definitions.templates import template_children, template_class, template_kind, template_successors
from ..definitions.views import import_class
from ..exceptions import TaskClassNotFound
from ..models import Delivery, DeliveryStatus, Node, NodeKind, Status, Subscription
from ..models.status import ENDED_FOR_GOOD, transition
from .hooks import call_hook
from .state import WorkflowState

S = Status

#: Normalised values longer than this are stored as a digest (the index keeps short keys).
MAX_KEY_CHARS = 200


class BadKey(ValueError):
    """A correlation value that cannot be matched (wrong type, empty)."""


def correlation_value(value: Any) -> str | None:
    """The text a correlation value is indexed and looked up under; None for "no value".

    Runtime parameters and payloads are JSON, so equal JSON values give equal text: strings
    stay as they are, integers and integral floats are written as integers (``5`` and ``5.0``
    match), other numbers with ``repr``, booleans as ``true``/``false``. Objects and arrays are
    refused (:class:`BadKey`). Long values are replaced by their sha256 digest.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadKey(f"the key value {value!r} is not a finite number")
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise BadKey(f"a key value must be a string or a number, not {type(value).__name__}")
    if len(text) > MAX_KEY_CHARS or "\x00" in text:
        text = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


# ==================================================================================================
# which classes listen on which topic
# ==================================================================================================
@dataclass(frozen=True)
class TopicListeners:
    """The listener classes that registered templates put on one topic."""

    topic: str
    classes: tuple[type, ...]


def _walk_templates(roots: Iterable[Any]) -> Iterable[Any]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        template = stack.pop()
        if template is None or id(template) in seen:
            continue
        seen.add(id(template))
        yield template
        stack.extend(template_children(template))
        stack.extend(template_successors(template))
        stack.extend(getattr(template, "next_process_dag", None) or [])
        root = getattr(template, "root_process_dag", None)
        if root is not None:
            stack.append(root)


def _registered_roots() -> list[Any]:
    return [*Dagger.template_dags.values(), *Dagger.process_templates.values()]


#: The roots the topic map was built from, and the map. The roots are held (not their ids): an
#: id is reused once its object is freed, so a key of ids could hit the map of another registry.
_topic_map: tuple[list[Any], dict[str, tuple[type, ...]]] = ([], {})


def _listeners_by_topic() -> dict[str, tuple[type, ...]]:
    """{topic: listener classes} of the registered templates, rebuilt when the registry changes."""
    roots = _registered_roots()
    built_from, topic_map = _topic_map
    if len(built_from) == len(roots) and all(a is b for a, b in zip(built_from, roots, strict=True)):
        return topic_map
    return _build_topic_map(roots)


def _build_topic_map(roots: list[Any]) -> dict[str, tuple[type, ...]]:
    global _topic_map
    found: dict[str, list[type]] = {}
    for template in _walk_templates(roots):
        if template_kind(template) != NodeKind.LISTENER:
            continue
        topic = getattr(template, "topic", None)
        cls = template_class(template)
        if not topic or not isinstance(cls, type):
            continue
        classes = found.setdefault(topic, [])
        if cls not in classes:
            classes.append(cls)
    topic_map = {topic: tuple(classes) for topic, classes in found.items()}
    _topic_map = (roots, topic_map)
    return topic_map


def listener_topics() -> list[str]:
    """Every topic a registered listener template waits on (what the bridge subscribes to)."""
    return sorted(_listeners_by_topic())


def topic_listeners(topic: str) -> TopicListeners | None:
    """The listener classes of ``topic``, or None when no registered template listens on it."""
    classes = _listeners_by_topic().get(topic)
    return TopicListeners(topic, classes) if classes else None


@lru_cache(maxsize=512)
def listener_class(path: str) -> type | None:
    """The class of a listener node (None if it cannot be imported any more)."""
    try:
        return import_class(path)
    except TaskClassNotFound:
        return None


# ==================================================================================================
# key extraction (user code: runs in the bridge or the HTTP request, outside any transaction)
# ==================================================================================================
@dataclass
class Keys:
    """What a payload addresses: ``pairs`` of (key name, normalised value), and why others were dropped."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: "no_key", "bad_key_type" or "extractor_error" when no pair is usable.
    reason: str = ""


def extract_keys(
    listeners: TopicListeners, payload: Any, *, raw: Any = None, topic: str | None = None
) -> Keys:
    """Run each listener class's ``get_correlatable_keys_from_payload`` and keep the usable pairs.

    An entry is usable when it is a ``(name, value)`` pair with a non-empty name and a scalar,
    non-empty value. As a convenience beyond the original, an entry that is a JSON object (the
    seed's default ``get_correlatable_key`` returns the payload itself) is read as
    ``(correlatable_key, payload[correlatable_key])`` when the class declares ``correlatable_key``.
    """
    keys = Keys()
    seen: set[tuple[str, str]] = set()
    bad_type = errors = 0
    if topic is not None:
        # The value as the topic declares it (bytes, text, a record; decoded JSON by default).
        try:
            payload = payloads.listener_value(topic, payload, raw)
        except Exception as exc:  # noqa: BLE001 - a record type's constructor is user code
            keys.problems.append(f"the value is not a {payloads.value_kind(topic)} of {topic!r}: {exc!r}")
            keys.reason = "extractor_error"
            return keys
    for cls in listeners.classes:
        try:
            task = cls()
            entries = _keys_of(task, payload)
        except Exception as exc:  # noqa: BLE001 - user code; recorded with the message
            errors += 1
            keys.problems.append(f"{cls.__name__}.get_correlatable_keys_from_payload raised {exc!r}")
            continue
        if (
            entries is None
            or isinstance(entries, str | bytes | Mapping)
            or not isinstance(entries, Iterable)
            or _looks_like_a_pair(entries)
        ):
            entries = [entries]
        for entry in entries:
            pair = _pair(entry, getattr(cls, "correlatable_key", None))
            if isinstance(pair, str):
                if pair.startswith("bad_key_type"):
                    bad_type += 1
                keys.problems.append(f"{cls.__name__}: {pair}")
                continue
            if pair not in seen:
                seen.add(pair)
                keys.pairs.append(pair)
    if not keys.pairs:
        keys.reason = "bad_key_type" if bad_type else "extractor_error" if errors else "no_key"
    return keys


def _keys_of(task: Any, payload: Any) -> Any:
    """What ``task.get_correlatable_keys_from_payload(payload)`` returns. When the class keeps the
    base class's two async wrappers (the usual case: it defines ``get_correlatable_key`` only),
    that is ``[get_correlatable_key(payload)]``, called directly: running the wrappers' coroutine
    on an event loop cost more than routing the message."""
    cls = type(task)
    if (
        cls.get_correlatable_keys_from_payload is ITask.get_correlatable_keys_from_payload
        and cls.get_correlatable_key_from_payload is ITask.get_correlatable_key_from_payload
    ):
        return [call_hook(task.get_correlatable_key, payload)]
    return call_hook(task.get_correlatable_keys_from_payload, payload)


def _looks_like_a_pair(entries: Any) -> bool:
    """A single ``(name, scalar)`` returned where a list of pairs was expected."""
    return (
        isinstance(entries, tuple)
        and len(entries) == 2
        and isinstance(entries[0], str)
        and not isinstance(entries[1], list | tuple | Mapping)
    )


def _pair(entry: Any, declared: str | None) -> tuple[str, str] | str:
    """A usable (name, text value) pair, or a string saying why ``entry`` is not one."""
    if isinstance(entry, Mapping):
        if declared and declared in entry:
            entry = (declared, entry[declared])
        else:
            wanted = f" (no {declared!r} in it)" if declared else ""
            return f"no_key: got an object{wanted}"
    if isinstance(entry, str | bytes) or not isinstance(entry, Sequence) or len(entry) < 2:
        return f"no_key: {_short(entry)} is not a (name, value) pair"
    name, value = entry[0], entry[1]
    if not isinstance(name, str) or not name:
        return f"no_key: the key name {_short(name)} is not a non-empty string"
    if value is None or value == "":
        return f"no_key: {name!r} has no value"
    try:
        text = correlation_value(value)
    except BadKey as exc:
        return f"bad_key_type: {name!r}: {exc}"
    assert text is not None
    return (name, text)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ==================================================================================================
# maintaining the index (called by the walker and the services inside the locked transaction)
# ==================================================================================================
def keeps_subscription(node: Node) -> bool:
    """Whether a listener in this state can still receive messages."""
    if node.status not in ENDED_FOR_GOOD:
        return True
    if node.status == S.COMPLETED:
        return bool(node.config.get("reprocess_on_message"))
    if node.status == S.SKIPPED:
        return bool(node.config.get("allow_skip_to"))
    return False


def _value_for(state: WorkflowState, node: Node) -> str | None:
    name = node.config.get("correlatable_key")
    try:
        return correlation_value(state.workflow.runtime_parameters.get(name)) if name else None
    except BadKey:
        return None  # an object or array never matches a message


def _subscription(state: WorkflowState, node: Node) -> Subscription | None:
    name = node.config.get("correlatable_key")
    topic = node.config.get("topic")
    if not name or not topic:
        return None  # the original registered nothing for a listener without correlatable_key
    cls = listener_class(node.task_class)
    return Subscription(
        workflow_id=state.workflow.id,
        node_id=node.id,
        topic=topic,
        key_name=name,
        key_value=_value_for(state, node),
        match_only_one=bool(getattr(cls, "match_only_one", False)),
        created_at=state.now,
    )


def listener_started(state: WorkflowState, node: Node) -> None:
    """A listener began waiting: if messages were buffered for it, they become pending deliveries
    and the listener is handed to a worker. Pending, they are the message sweep's to send again
    should that hand-over be lost (a broker that restarted empty): a buffered delivery waits for
    its listener to start and no sweep would ever send it, while the listener, waiting, is no
    recovery's either."""
    if node.config.get("_buffered"):
        node.config = {k: v for k, v in node.config.items() if k != "_buffered"}
        state.touch(node)
        transition(
            Delivery.objects.filter(node_id=node.id, status=DeliveryStatus.BUFFERED).filter(
                Q(expires_at__isnull=True) | Q(expires_at__gt=state.now)
            ),
            DeliveryStatus.PENDING,
            expires_at=None,
            updated_at=state.now,
            redispatch_at=None,
            redispatches=0,
        )
        state.to_dispatch.append(node.id)


def subscriptions_restore(state: WorkflowState) -> int:
    """A stopped workflow is resumed: its listeners that can take messages again get their
    subscription back (a stop deleted them), keyed on the current runtime parameters. Rows
    that exist are left as they are. Returns how many were written."""
    listeners = [
        node for node in state.nodes.values() if node.kind == NodeKind.LISTENER and keeps_subscription(node)
    ]
    if not listeners:
        return 0
    present = set(
        Subscription.objects.filter(node_id__in=[n.id for n in listeners]).values_list("node_id", flat=True)
    )
    rows = [
        sub
        for node in listeners
        if node.id not in present and (sub := _subscription(state, node)) is not None
    ]
    if rows:
        Subscription.objects.bulk_create(rows)
    return len(rows)


def parameters_changed(state: WorkflowState, *, changed: list[str], removed: list[str]) -> None:
    """Runtime parameters changed: re-key the listeners that correlate on one of them."""
    names = set(changed) | set(removed)
    if not names or state.is_new:
        return
    for node in state.nodes.values():
        if (
            node.kind == NodeKind.LISTENER
            and node.config.get("correlatable_key") in names
            and keeps_subscription(node)
        ):
            Subscription.objects.filter(node_id=node.id).update(key_value=_value_for(state, node))


def before_flush(state: WorkflowState) -> None:
    """Write the subscriptions of a new workflow; note those of listeners that are done, which
    :func:`subscriptions_write` deletes (for a batch of workflows at once)."""
    if state.is_new:
        if state.delete_after:
            return  # finished at creation and never stored
        rows = [
            sub
            for node in state.nodes.values()
            if node.kind == NodeKind.LISTENER
            and keeps_subscription(node)
            and (sub := _subscription(state, node)) is not None
        ]
        if rows:
            Subscription.objects.bulk_create(rows)
        return
    if not any(node.kind == NodeKind.LISTENER for node in state.nodes.values()):
        return  # only listeners have subscriptions: nothing to remove
    if any(node is None and to in ENDED_FOR_GOOD for node, _, to in state.changes):
        # The workflow ended and cannot be retried: its listeners take no more messages, whatever
        # their own status (one that failed under failure_policy="continue" would otherwise keep
        # its row for ever), except a completed one with reprocess_on_message, which still
        # refreshes its state from later messages, as in the original.
        state.subscriptions_kept = [
            node.id
            for node in state.nodes.values()
            if node.kind == NodeKind.LISTENER and node.status == S.COMPLETED and keeps_subscription(node)
        ]
        return
    state.subscriptions_done = [
        node.id for node in state.ended if node.kind == NodeKind.LISTENER and not keeps_subscription(node)
    ]


def subscriptions_write(states: Sequence[WorkflowState]) -> None:
    """Delete the subscriptions :func:`before_flush` noted, of all ``states`` in one statement:
    those of listeners that are done, and every one of an ended workflow but those it keeps."""
    done = [node_id for state in states for node_id in state.subscriptions_done]
    ended = [state for state in states if state.subscriptions_kept is not None]
    if not done and not ended:
        return
    where = Q(node_id__in=done) if done else Q()
    if ended:
        gone = Q(workflow_id__in=[state.workflow.id for state in ended])
        kept = [node_id for state in ended for node_id in state.subscriptions_kept or ()]
        if kept:  # node ids are unique: one list serves every ended workflow
            gone &= ~Q(node_id__in=kept)
        where = where | gone if done else gone
    Subscription.objects.filter(where).delete()


__all__ = [
    "BadKey",
    "Keys",
    "TopicListeners",
    "before_flush",
    "correlation_value",
    "extract_keys",
    "keeps_subscription",
    "listener_class",
    "listener_started",
    "listener_topics",
    "parameters_changed",
    "subscriptions_restore",
    "subscriptions_write",
    "topic_listeners",
]
