"""The ``Dagger`` facade: template registry, topics, and the engine calls of the original API.

``Dagger(...)`` keeps the original's constructor so ported code runs unchanged. Parameters that
still mean something here are stored and offered to the settings through ``Dagger.overrides()``;
the others (stores, Faust and Kafka plumbing) are accepted and, when given a non-default value,
reported once with a :class:`DaggerCompatibilityWarning`.

Engine calls are synchronous, with ``a``-prefixed async twins (Django's convention): where the
original awaited ``app.submit(...)``, async code awaits ``Dagger.asubmit(...)``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..exceptions import (
    InvalidTemplate,
    SchemaRegistryUnavailable,
    TemplateDoesNotExist,
)
from . import engine_door
from .ids import as_workflow_id
from .sync import sync_only
from .tasks import MonitoringTask
from .templates import ITemplateDAG, TaskTemplate, validate_template

logger = logging.getLogger("dagger_django.definitions")


class DaggerCompatibilityWarning(UserWarning):
    """A parameter of the original Dagger API was accepted but has no effect in dagger_django."""


@dataclass
class AerospikeConfig:
    """The original's Aerospike store settings, kept so configuration modules import unchanged.

    ``Dagger(aerospike_config=...)`` accepts it and ignores it with a
    :class:`DaggerCompatibilityWarning`: workflows are stored in the Django database.
    """

    HOSTS: Any = None
    POLICIES: Any = None
    NAMESPACE: str | None = None
    USERNAME: str | None = None
    PASSWORD: str | None = None
    TTL: int = -1
    KWARGS: dict[str, Any] = field(default_factory=dict)

    def as_options(self) -> dict[str, Any]:
        """The options the original handed its Aerospike client (unused here)."""
        return {
            "hosts": self.HOSTS,
            "policies": self.POLICIES,
            "namespace": self.NAMESPACE,
            "username": self.USERNAME,
            "password": self.PASSWORD,
            "ttl": self.TTL,
            **dict(self.KWARGS or {}),
        }


#: What ``Dagger.main()`` says instead of starting a Faust worker.
MAIN_MESSAGE = """\
dagger_django has no single-process entry point: Dagger.main() started a Faust worker, here the
work is shared by processes you run (and scale) separately, on the Django project:
  celery -A <project> worker                  runs tasks, listeners' on_message, stop hooks
  celery -A <project> beat                    timer, recovery and outbox sweeps
  python manage.py dagger_kafka_bridge        consumes the listener topics (when Kafka is used)
  python manage.py runserver (or gunicorn)    the HTTP API and the admin
For a local try-out with no servers, `make run` in the dagger_django repository starts them all.
See docs/porting.md ("Deployment")."""


class Topic:
    """A named Kafka topic. ``send`` writes to the outbox in the caller's transaction; the
    message is relayed to Kafka after commit.

    ``send`` called inside a running event loop returns an awaitable (as the original's Faust
    ``send`` did), so ``await topic.send(...)`` in an ``async def`` hook keeps working; outside one
    it sends at once. ``asend`` is the explicit async form.
    """

    def __init__(
        self,
        name: str,
        key_type: Any = None,
        value_type: Any = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> None:
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.key_serializer = key_serializer
        self.value_serializer = value_serializer

    @property
    def topic_name(self) -> str:
        return self.name

    def get_topic_name(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Topic {self.name!r}>"

    def _send_now(self, key: Any = None, value: Any = None, headers: Any = None) -> Any:
        return engine_door.send_message(topic=self.name, key=key, value=value, headers=headers)

    def send(self, key: Any = None, value: Any = None, headers: Any = None) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._send_now(key=key, value=value, headers=headers)
        return self.asend(key=key, value=value, headers=headers)

    async def asend(self, key: Any = None, value: Any = None, headers: Any = None) -> Any:
        from asgiref.sync import sync_to_async

        return await sync_to_async(self._send_now)(key=key, value=value, headers=headers)


class _TopicMap(dict[str, Topic]):
    """``Dagger.topics``: ``topics[name]`` also works for a topic only named in a template (it is
    created on first use), so ``Dagger.app.topics[self.topic].send(...)`` always works."""

    def __missing__(self, name: str) -> Topic:
        topic = Topic(name)
        self[name] = topic
        return topic


class _hybridmethod:
    """A method that, called on the class, runs on the current ``Dagger.app`` instance."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Any, owner: type) -> Callable[..., Any]:
        target = obj if obj is not None else owner.app  # type: ignore[attr-defined]
        return functools.partial(self.func, target)


def _track_explicit(init: Callable[..., None]) -> Callable[..., None]:
    """Remember which keyword arguments were passed (the signature shown stays the original's)."""

    @functools.wraps(init)
    def wrapper(self: Dagger, **kwargs: Any) -> None:
        self._explicit = frozenset(kwargs)
        init(self, **kwargs)

    return wrapper


def _bootstrap_servers(value: Any) -> str | None:
    """``"kafka://h1:9092;h2:9092"`` or a list -> ``"h1:9092,h2:9092"`` (librdkafka's form)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    hosts: list[str] = []
    for item in items:
        for part in str(item).replace(";", ",").split(","):
            part = part.strip()
            if part.startswith("kafka://"):
                part = part[len("kafka://") :]
            if part:
                hosts.append(part)
    return ",".join(hosts) or None


#: Builds ``(schema_registry_client, message_serializer)`` for a URL: a door the kafka package
#: fills when the app is ready (definitions never import a transport).
_schema_registry_factory: Callable[[str], tuple[Any, Any]] | None = None


def set_schema_registry_factory(factory: Callable[[str], tuple[Any, Any]] | None) -> None:
    """Install the builder behind ``Dagger.app.schema_registry_client`` (``AppConfig.ready``)."""
    global _schema_registry_factory
    _schema_registry_factory = factory


_MEANINGFUL = (
    "trigger_interval",
    "max_tasks_per_trigger",
    "restart_tasks_on_boot",
    "delete_workflow_on_complete",
    "task_update_topic",
    "task_update_callbacks",
    "max_correletable_keys_in_values",
)

_NO_EFFECT_DEFAULTS: dict[str, Any] = {
    "datadir": None,
    "store": "aerospike://",
    "application_name": "dagger",
    "package_name": "dagger",
    "kafka_partitions": 1,
    "tasks_topic": "dagger_task_topic",
    "bootstrap_topic": "dagger_bootstrap",
    "beacon": None,
    "loop": None,
    "tracing_sensor": None,
    "datadog_sensor": None,
    "aerospike_config": None,
    "enable_changelog": True,
    "schema_registry_url": None,
    "message_serializer": None,
    "logging_config": None,
}


class Dagger:
    """The workflow engine's entry point, with the original's API.

    Registries are class-level (``Dagger.template_dags``, ``Dagger.process_templates``,
    ``Dagger.topics``) so decorators work before any instance exists. Constructing one sets
    ``Dagger.app``.
    """

    app: ClassVar[Dagger | None] = None
    template_dags: ClassVar[dict[str, ITemplateDAG]] = {}
    process_templates: ClassVar[dict[str, TaskTemplate]] = {}
    topics: ClassVar[dict[str, Topic]] = _TopicMap()

    _explicit: frozenset[str] = frozenset()

    @_track_explicit
    def __init__(
        self,
        *,
        broker: str | None = None,
        datadir: str | None = None,
        store: str = "aerospike://",
        application_name: str = "dagger",
        package_name: str = "dagger",
        kafka_partitions: int = 1,
        task_update_topic: str | None = None,
        tasks_topic: str = "dagger_task_topic",
        bootstrap_topic: str = "dagger_bootstrap",
        beacon: Any = None,
        kafka_broker_list: Any = None,
        loop: Any = None,
        tracing_sensor: Any = None,
        datadog_sensor: Any = None,
        trigger_interval: int = 60,
        max_tasks_per_trigger: int = 2000,
        restart_tasks_on_boot: bool = True,
        aerospike_config: Any = None,
        enable_changelog: bool = True,
        max_correletable_keys_in_values: int = 15000,
        schema_registry_url: str | None = None,
        message_serializer: Any = None,
        delete_workflow_on_complete: bool = False,
        task_update_callbacks: Sequence[Callable[..., Any]] = [],  # noqa: B006 - the original's default; copied
        logging_config: Any = None,
        **kwargs: Any,
    ) -> None:
        self.broker = broker
        self.kafka_broker_list = kafka_broker_list
        self.trigger_interval = trigger_interval
        self.max_tasks_per_trigger = max_tasks_per_trigger
        self.restart_tasks_on_boot = restart_tasks_on_boot
        self.delete_workflow_on_complete = delete_workflow_on_complete
        self.task_update_topic = task_update_topic
        self.task_update_callbacks = list(task_update_callbacks or [])
        self.max_correletable_keys_in_values = max_correletable_keys_in_values

        given = dict(
            datadir=datadir,
            store=store,
            application_name=application_name,
            package_name=package_name,
            kafka_partitions=kafka_partitions,
            tasks_topic=tasks_topic,
            bootstrap_topic=bootstrap_topic,
            beacon=beacon,
            loop=loop,
            tracing_sensor=tracing_sensor,
            datadog_sensor=datadog_sensor,
            aerospike_config=aerospike_config,
            enable_changelog=enable_changelog,
            schema_registry_url=schema_registry_url,
            message_serializer=message_serializer,
            logging_config=logging_config,
        )
        # schema_registry_url has an effect (the two properties below); message_serializer, as in
        # the original, is accepted and ignored (the serializer is built from the URL).
        self.schema_registry_url = schema_registry_url
        self._message_serializer_argument = message_serializer
        self._schema_registry: tuple[Any, Any] | None = None
        for name, value in given.items():
            if name not in ("schema_registry_url", "message_serializer"):
                setattr(self, name, value)
        self.kwargs = dict(kwargs)
        ignored = [
            name
            for name, value in given.items()
            if name != "schema_registry_url" and value != _NO_EFFECT_DEFAULTS[name]
        ]
        ignored.extend(sorted(kwargs))
        if ignored:
            warnings.warn(
                "Dagger(): these parameters have no effect in dagger_django and were ignored: "
                + ", ".join(ignored),
                DaggerCompatibilityWarning,
                stacklevel=3,
            )
        Dagger.app = self
        # The settings read these arguments through the reader handed over here (the settings
        # never import the facade). Imported in the call: importing the facade imports no Django.
        from ..conf import read_overrides_from

        read_overrides_from(_current_overrides)

    # -- schema registry (the optional ``avro`` extra) ---------------------------------------------
    @property
    def schema_registry_client(self) -> Any:
        """confluent-kafka's ``SchemaRegistryClient`` for ``schema_registry_url`` (None without a
        URL), for tasks that encode or decode Avro. Needs the ``avro`` extra
        (``pip install "dagger-django[avro]"``); without it, reading this raises
        :class:`~dagger_django.exceptions.SchemaRegistryUnavailable` saying so."""
        pair = self._schema_registry_pair()
        return None if pair is None else pair[0]

    @property
    def message_serializer(self) -> Any:
        """A serializer with the original's methods, ``encode_record_with_schema(topic, schema,
        record)`` and ``decode_message(message)``, on :attr:`schema_registry_client` (None
        without a URL)."""
        pair = self._schema_registry_pair()
        return None if pair is None else pair[1]

    def _schema_registry_pair(self) -> tuple[Any, Any] | None:
        if not self.schema_registry_url:
            return None
        if self._schema_registry is None:
            if _schema_registry_factory is None:
                raise SchemaRegistryUnavailable(
                    "Dagger.app.schema_registry_client needs Django set up (the dagger_django app "
                    "installs the schema registry support when it is ready)."
                )
            self._schema_registry = _schema_registry_factory(self.schema_registry_url)
        return self._schema_registry

    @_hybridmethod
    def overrides(self: Dagger | None) -> dict[str, Any]:
        """The explicitly passed constructor parameters that configure dagger_django, by name.

        Kafka servers (``kafka_broker_list``, else ``broker``) appear as
        ``kafka_bootstrap_servers`` (``"host:port,..."``, without ``kafka://``). Called on the
        class, it reads the current ``Dagger.app`` ({} when none was constructed).
        """
        if self is None:
            return {}
        result = {name: getattr(self, name) for name in _MEANINGFUL if name in self._explicit}
        servers = None
        if "kafka_broker_list" in self._explicit:
            servers = _bootstrap_servers(self.kafka_broker_list)
        if servers is None and "broker" in self._explicit:
            servers = _bootstrap_servers(self.broker)
        if servers is not None:
            result["kafka_bootstrap_servers"] = servers
        return result

    # -- registration -------------------------------------------------------------------------------
    @classmethod
    def register_template(cls, template_name: str) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
        """Decorator: call the function with ``template_name`` now, validate the workflow template it
        returns (``InvalidTemplate`` surfaces at import) and register it; the function is returned."""

        def decorator(function: Callable[[str], Any]) -> Callable[[str], Any]:
            template = function(template_name)
            if not isinstance(template, ITemplateDAG):
                raise InvalidTemplate(
                    f"register_template({template_name!r}): {function.__name__} returned {template!r}, "
                    "not a workflow template (call .build() on the template builder)"
                )
            validate_template(template)
            cls.template_dags[template_name] = template
            return function

        return decorator

    @classmethod
    def register_process_template(
        cls, process_template_name: str
    ) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
        """Decorator: like :meth:`register_template`, for a reusable process template."""

        def decorator(function: Callable[[str], Any]) -> Callable[[str], Any]:
            template = function(process_template_name)
            if not isinstance(template, TaskTemplate):
                raise InvalidTemplate(
                    f"register_process_template({process_template_name!r}): {function.__name__} returned "
                    f"{template!r}, not a process template (call .build() on the process builder)"
                )
            validate_template(template)
            cls.process_templates[process_template_name] = template
            return function

        return decorator

    @classmethod
    def get_template(cls, template_name: str) -> ITemplateDAG:
        try:
            return cls.template_dags[template_name]
        except KeyError:
            raise TemplateDoesNotExist(f"No workflow template is registered as {template_name!r}.") from None

    # -- topics ---------------------------------------------------------------------------------
    @classmethod
    def create_topic(
        cls,
        topic_name: str,
        key_type: Any = None,
        value_type: Any = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> Topic:
        """A topic by name; a second call with the same name returns the first one."""
        if topic_name in cls.topics:
            logger.debug("topic %r already exists; returning it", topic_name)
            return cls.topics[topic_name]
        topic = Topic(topic_name, key_type, value_type, key_serializer, value_serializer)
        cls.topics[topic_name] = topic
        return topic

    @classmethod
    def add_topic(cls, topic_name: str, topic: Any) -> None:
        cls.topics[topic_name] = topic

    @classmethod
    def get_topic(cls, topic_name: str) -> Any:
        if topic_name not in cls.topics:
            raise KeyError(topic_name)
        return cls.topics[topic_name]

    # -- engine facade ------------------------------------------------------------------------------
    @classmethod
    @sync_only("Dagger.asubmit")
    def submit(cls, instance: Any, *, repartition: bool = True) -> Any:
        """Start a created workflow (an instance, its id or its id as a str) and return it as
        ``get_instance`` does. ``repartition`` is ignored: the database is shared, there is no
        partition owner to route to."""
        return engine_door.submit_workflow(workflow_id=as_workflow_id(instance))

    @classmethod
    async def asubmit(cls, instance: Any, *, repartition: bool = True) -> Any:
        from asgiref.sync import sync_to_async

        return await sync_to_async(cls.submit)(instance, repartition=repartition)

    @classmethod
    @sync_only("Dagger.aget_instance")
    def get_instance(cls, id: Any, log: bool = True) -> Any:
        """The workflow with this id (``WorkflowDoesNotExist`` if there is none)."""
        return engine_door.get_workflow(workflow_id=as_workflow_id(id))

    @classmethod
    async def aget_instance(cls, id: Any, log: bool = True) -> Any:
        from asgiref.sync import sync_to_async

        return await sync_to_async(cls.get_instance)(id, log)

    @classmethod
    @sync_only("Dagger.astop")
    def stop(cls, id: Any) -> Any:
        """Stop a workflow: unfinished nodes become STOPPED and running ones get their stop hook.
        Returns the workflow as ``get_instance`` does."""
        return engine_door.stop_workflow(workflow_id=as_workflow_id(id))

    @classmethod
    async def astop(cls, id: Any) -> Any:
        from asgiref.sync import sync_to_async

        return await sync_to_async(cls.stop)(id)

    @classmethod
    def get_monitoring_task(cls, task: Any, workflow_instance: Any) -> Any:
        """The monitor of a monitored process in ``workflow_instance`` (a workflow view from
        ``get_instance``), or None: when ``task`` is not monitored or its monitor has not been
        created yet (the engine creates it when the process starts with ``complete_by_time``).
        Reads the view only; ``aget_monitoring_task`` is the awaitable form."""
        monitor_id = getattr(task, "monitoring_task_id", None)
        if monitor_id is None or workflow_instance is None:
            return None
        monitor = workflow_instance.get_task(monitor_id)
        return monitor if isinstance(monitor, MonitoringTask) else None

    @classmethod
    async def aget_monitoring_task(cls, task: Any, workflow_instance: Any) -> Any:
        return cls.get_monitoring_task(task, workflow_instance)

    @classmethod
    def main(cls) -> None:
        """The original's entry point (a Faust worker). Here it exits with a message naming the
        processes to run instead: Celery worker, beat, the Kafka bridge and the web server."""
        raise SystemExit(MAIN_MESSAGE)


def _current_overrides() -> dict[str, Any]:
    """What the settings read: the current ``Dagger.app``'s :meth:`~Dagger.overrides`, {} without one."""
    app = Dagger.app
    return {} if app is None else app.overrides()


__all__ = ["AerospikeConfig", "Dagger", "DaggerCompatibilityWarning", "Topic", "set_schema_registry_factory"]
