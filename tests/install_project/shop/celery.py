# shop/celery.py — the project's Celery app: `celery -A shop worker`, `celery -A shop beat`
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
# Every CELERY_* setting in settings.py configures this app (CELERY_BROKER_URL -> broker_url).
app.config_from_object("django.conf:settings", namespace="CELERY")
# Redis hands an unacknowledged message to another worker after this many seconds: keep it above
# DAGGER["LEASE_SECONDS"] (300) plus a margin (check dagger_django.W030).
app.conf.broker_transport_options = {"visibility_timeout": 3600, **(app.conf.broker_transport_options or {})}
# Workers keep their database connections between tasks (check dagger_django.W031).
app.conf.setdefault("CELERY_DB_REUSE_MAX", 1000)
# Finds dagger_django.tasks (and the tasks.py of your own apps).
app.autodiscover_tasks()
