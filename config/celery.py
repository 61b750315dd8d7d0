"""The demo project's Celery app: `celery -A config worker`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Redis (and SQS) hand an unacknowledged message to another worker after this many seconds. It is
# set explicitly, above DAGGER['LEASE_SECONDS'] (300) plus the margin check dagger_django.W030
# asks for: a live task keeps its lease by heartbeat, and its message is not redelivered while it
# runs; a dead worker's node is recovered by the lease first. A CELERY_BROKER_TRANSPORT_OPTIONS
# setting of the project wins.
app.conf.broker_transport_options = {"visibility_timeout": 3600, **(app.conf.broker_transport_options or {})}
app.autodiscover_tasks()
