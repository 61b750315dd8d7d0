# shop/__init__.py — load the Celery app whenever Django starts, so that the web process sends
# through it too (without it: check dagger_django.E050 or W050)
from .celery import app as celery_app

__all__ = ("celery_app",)
