"""What a workflow looks like: builders, templates, task classes, the registry. Pure Python.

Nothing in this package imports Django models, Celery, Kafka or DRF, nor the engine: the engine
imports it, never the other way round. The facade's engine calls (``create_instance``,
``Dagger.submit``/``get_instance``/``stop``, ``Topic.send``) go through :mod:`.engine_door`, which
the dagger_django app connects to the engine when it is ready.
"""
