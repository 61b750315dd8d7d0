# --- dagger_django: the end of shop/settings.py ---------------------------------------------------
import os

INSTALLED_APPS += [
    "rest_framework",
    "django_celery_beat",
    "dagger_django",
    "orders",  # your app with a workflows module
]

# PostgreSQL (the psycopg driver comes with the postgres extra).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("DB_NAME", "shop"),
        "USER": os.environ.get("DB_USER", "postgres"),
        "PASSWORD": os.environ.get("DB_PASSWORD", ""),
        "HOST": os.environ.get("DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DB_PORT", "5432"),
        # Keep connections: a worker runs many short transactions.
        "CONN_MAX_AGE": 60,
        # Parameters travel apart from the SQL and repeated statements are prepared (less CPU).
        # Remove it behind PgBouncer in transaction mode older than 1.21.
        "OPTIONS": {"server_side_binding": True},
    }
}

# Celery: read by the app in shop/celery.py (namespace "CELERY").
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# dagger's Redis transport: a worker survives Redis restarting (only with a redis:// URL).
CELERY_BROKER_TRANSPORT = "dagger_django.adapters.redis_broker:Transport"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
# Beat keeps its schedule in the database, where dagger's migrate registers the timer and
# recovery sweeps.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE

# dagger_django's own settings; every key is optional (docs/configuration.md).
DAGGER = {}
