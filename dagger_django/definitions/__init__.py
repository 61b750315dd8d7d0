"""What a workflow looks like: builders, templates, task classes, the registry. Pure Python.

Nothing in this package imports Django models, Celery, Kafka or DRF; the engine imports it, never
the other way round (the facades in :mod:`.registry` and :meth:`.templates.TemplateDAG.create_instance`
reach the engine through imports inside the calls).
"""
