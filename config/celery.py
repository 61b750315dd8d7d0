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
# Celery 5.7's Django fixup closes every database connection before and after each task unless
# CELERY_DB_REUSE_MAX is set, so each task would connect anew (a PostgreSQL backend started per
# task) and CONN_MAX_AGE would mean nothing in a worker. With it set, the fixup closes them every
# this many tasks, and dagger_django closes a connection that failed or outlived CONN_MAX_AGE
# after each task, as Django does after each request (check dagger_django.W031).
app.conf.setdefault("CELERY_DB_REUSE_MAX", 1000)
app.autodiscover_tasks()
