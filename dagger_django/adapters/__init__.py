"""Implementations of the engine's ports: Celery in production, in-memory fakes for tests."""
