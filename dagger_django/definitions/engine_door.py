"""The one door from the definitions to the engine.

Imports run one way: the engine imports the definitions (it builds user task classes from node
rows, walks templates, reads the registry), the definitions never import the engine. The few
engine calls of the facade - ``template.create_instance``, ``Dagger.submit``, ``get_instance`` and
``stop``, ``Topic.send``, a workflow's ``stop`` - go through the functions below, which call the
engine connected here. The dagger_django app connects ``dagger_django.engine.services`` when it is
ready (``DaggerDjangoConfig.ready``); before that the engine, which needs Django's models, cannot
run, and a call raises ``AppRegistryNotReady`` saying so.

``tests/test_architecture.py`` keeps every import of ``dagger_django.engine`` out of the
definitions. Tests of the facade connect a stand-in engine with :func:`connect`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol


class Engine(Protocol):
    """What the facade asks of the engine: the services of ``dagger_django.engine.services``
    that return the original's instance objects, and the outbox's send."""

    def instance_create(
        self,
        *,
        template: Any,
        workflow_id: Any,
        partition_key_lookup: str | None,
        runtime_parameters: dict[str, Any],
        submit: bool,
        seed: Any,
        dynamic_process_builders: Mapping[str, Any] | None,
        parallel_process_templates: Mapping[str, Any] | None,
    ) -> Any: ...

    def instance_submit(self, *, workflow_id: uuid.UUID) -> Any: ...

    def instance_stop(self, *, workflow_id: uuid.UUID) -> Any: ...

    def workflow_instance(self, *, workflow_id: uuid.UUID) -> Any: ...

    def outbox_send(self, *, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> Any: ...


#: The connected engine; None until the dagger_django app is ready.
_engine: Engine | None = None


def connect(engine: Engine | None) -> Engine | None:
    """Connect ``engine`` (None disconnects); returns the engine connected before."""
    global _engine
    previous, _engine = _engine, engine
    return previous


def _connected() -> Engine:
    if _engine is None:
        from django.core.exceptions import AppRegistryNotReady

        raise AppRegistryNotReady(
            "dagger_django's engine is not connected yet: it is connected when the dagger_django app "
            "is ready. Add 'dagger_django' to INSTALLED_APPS and call django.setup() (manage.py, "
            "the Celery worker and pytest-django do) before creating, starting, reading or stopping "
            "workflows or sending to a topic."
        )
    return _engine


def create_workflow(
    *,
    template: Any,
    workflow_id: Any,
    partition_key_lookup: str | None,
    runtime_parameters: dict[str, Any],
    submit: bool,
    seed: Any,
    dynamic_process_builders: Mapping[str, Any] | None,
    parallel_process_templates: Mapping[str, Any] | None,
) -> Any:
    """Create a workflow from ``template`` (and start it if ``submit``): ``template.create_instance``."""
    return _connected().instance_create(
        template=template,
        workflow_id=workflow_id,
        partition_key_lookup=partition_key_lookup,
        runtime_parameters=runtime_parameters,
        submit=submit,
        seed=seed,
        dynamic_process_builders=dynamic_process_builders,
        parallel_process_templates=parallel_process_templates,
    )


def submit_workflow(*, workflow_id: uuid.UUID) -> Any:
    """Start a created workflow: ``Dagger.submit``."""
    return _connected().instance_submit(workflow_id=workflow_id)


def get_workflow(*, workflow_id: uuid.UUID) -> Any:
    """The workflow as the original's instance object: ``Dagger.get_instance``."""
    return _connected().workflow_instance(workflow_id=workflow_id)


def stop_workflow(*, workflow_id: uuid.UUID) -> Any:
    """Stop a workflow: ``Dagger.stop`` and a workflow's own ``stop``."""
    return _connected().instance_stop(workflow_id=workflow_id)


def send_message(*, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> Any:
    """Send a message through the outbox: ``Topic.send``."""
    return _connected().outbox_send(topic=topic, key=key, value=value, headers=headers)


__all__ = [
    "Engine",
    "connect",
    "create_workflow",
    "get_workflow",
    "send_message",
    "stop_workflow",
    "submit_workflow",
]
