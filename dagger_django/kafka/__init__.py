"""Kafka transport: the bridge that consumes listener topics, the codec, and the outbox relay.

Driving and driven adapters around the engine (``dagger_django.engine.messages`` and
``dagger_django.engine.outbox``); the engine never imports this package. Needs confluent-kafka
(``pip install dagger-django[kafka]``). See ``docs/bridge.md``.
"""
