"""Settings of the demo/dev project, driven by the environment.

With no environment at all this runs the embedded default: an SQLite file and kombu's filesystem
broker under ./var, so a fresh clone needs no server, with development conveniences (DEBUG on,
a fixed secret key). Anything else (DATABASE_URL set: production, and the test suite) is
production-safe by default: DEBUG off unless DJANGO_DEBUG asks for it, DJANGO_SECRET_KEY required,
password validators, throttling; HTTPS switches (cookies, HSTS, redirect) from the environment.
The production settings are listed in docs/deployment.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DAGGER_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


#: No DATABASE_URL: the embedded mode of `make run` (SQLite and a file broker on one machine,
#: the web server on 127.0.0.1). Only this mode gets the development defaults below.
EMBEDDED = not os.environ.get("DATABASE_URL")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not EMBEDDED:
        # A fixed fallback key would let anyone who read this file forge sessions and password
        # reset links of a deployment that forgot to set one: refuse to start instead.
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Outside the embedded mode (DATABASE_URL is set) the secret "
            "key must come from the environment, e.g. DJANGO_SECRET_KEY=$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(50))'); see docs/deployment.md."
        )
    SECRET_KEY = "embedded-mode-only-insecure-key"
DEBUG = env_bool("DJANGO_DEBUG", EMBEDDED)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

# --- HTTPS (off by default: they need TLS in front; docs/deployment.md turns them on) ---------
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
if os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER"):
    # "HTTP_X_FORWARDED_PROTO,https": trust the TLS-terminating proxy's header (only behind one).
    _header, _, _value = os.environ["DJANGO_SECURE_PROXY_SSL_HEADER"].partition(",")
    SECURE_PROXY_SSL_HEADER = (_header.strip(), _value.strip() or "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    # The API's Swagger UI and Redoc pages (/api/dagger/docs/): templates, and scripts served locally.
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "dagger_django",
    "config.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -----------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'dagger.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")))
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and os.environ.get(
    "DB_SERVER_SIDE_BINDING", "1"
) not in ("0", "false", "no"):
    # Parameters travel apart from the SQL text (no quoting in Python) and psycopg prepares the
    # statements a connection repeats: measured, 14 % less CPU in the worker and 10 % less in
    # PostgreSQL per workflow (docs/benchmarks.md). Behind PgBouncer in transaction mode older than
    # 1.21, set DB_SERVER_SIDE_BINDING=0.
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite serialises writers. WAL lets readers (web, admin) run beside the one writer, the busy
    # timeout makes a writer wait instead of failing, and IMMEDIATE transactions take the write
    # lock up front so two writers never deadlock on a lock upgrade. Production uses PostgreSQL.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/admin/login/"

# The API's own permissions (docs/api.md#permissions) are checked after these defaults.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        # Basic authentication that answers 429 to a client after too many wrong passwords.
        "dagger_django.api.authentication.ThrottledBasicAuthentication",
        # For machines: `manage.py drf_create_token <user>`, then "Authorization: Token <key>".
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("DJANGO_THROTTLE_ANON", "60/minute"),
        "user": os.environ.get("DJANGO_THROTTLE_USER", "6000/minute"),
        "login_failure": os.environ.get("DJANGO_THROTTLE_LOGIN_FAILURE", "10/minute"),
    },
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}

# --- celery -------------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport with atomic message writes (config/fs_broker.py).
    CELERY_BROKER_TRANSPORT = "config.fs_broker:Transport"
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        # Exchange tables; kombu's default is ./control in the current directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        "polling_interval": 0.05,
    }
elif CELERY_BROKER_URL.startswith("redis://"):
    # kombu's Redis transport whose channel closes even when Redis is gone: without it a Celery
    # 5.7 worker exits when Redis restarts (dagger_django/adapters/redis_broker.py).
    CELERY_BROKER_TRANSPORT = "dagger_django.adapters.redis_broker:Transport"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = int(os.environ.get("CELERY_PREFETCH", "4"))
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "dagger")
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"

# --- dagger -------------------------------------------------------------------------------------
DAGGER = {
    "MAX_RUNTIME_PARAMETERS_BYTES": int(os.environ.get("DAGGER_MAX_RUNTIME_PARAMETERS_BYTES", 256 * 1024)),
}
# Timers and recovery (docs/time.md): DAGGER_<NAME> in the environment overrides the default.
for _name, _cast in (
    ("TRIGGER_INTERVAL", float),
    ("MAX_TASKS_PER_TRIGGER", int),
    ("TIMER_BATCH", int),
    ("LEASE_SECONDS", float),
    ("HEARTBEAT_SECONDS", float),
    ("COALESCE_SECONDS", float),
    ("RECOVERY_INTERVAL", float),
):
    if os.environ.get(f"DAGGER_{_name}"):
        DAGGER[_name] = _cast(os.environ[f"DAGGER_{_name}"])
if os.environ.get("DAGGER_TIMER_QUEUE"):
    DAGGER["TIMER_QUEUE"] = os.environ["DAGGER_TIMER_QUEUE"]
if os.environ.get("DAGGER_TIMER_RUN_INLINE"):
    DAGGER["TIMER_RUN_INLINE"] = env_bool("DAGGER_TIMER_RUN_INLINE", True)
if os.environ.get("DAGGER_READY_LIST"):
    DAGGER["READY_LIST"] = env_bool("DAGGER_READY_LIST", True)
if os.environ.get("DAGGER_RESTART_TASKS_ON_BOOT"):
    DAGGER["RESTART_TASKS_ON_BOOT"] = env_bool("DAGGER_RESTART_TASKS_ON_BOOT", True)
# Kafka (optional; docs/bridge.md): the bridge and the outbox relay connect when servers are set.
# KAFKA_CONFIG / KAFKA_CONSUMER_CONFIG / KAFKA_PRODUCER_CONFIG: JSON objects of librdkafka settings.
if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
    DAGGER["KAFKA"] = {
        **json.loads(os.environ.get("KAFKA_CONFIG") or "{}"),
        "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
    }
    DAGGER["KAFKA_CONSUMER"] = json.loads(os.environ.get("KAFKA_CONSUMER_CONFIG") or "{}")
    DAGGER["KAFKA_PRODUCER"] = json.loads(os.environ.get("KAFKA_PRODUCER_CONFIG") or "{}")
if os.environ.get("DAGGER_KAFKA_CONSUMER_FACTORY"):
    DAGGER["KAFKA_CONSUMER_FACTORY"] = os.environ["DAGGER_KAFKA_CONSUMER_FACTORY"]
if os.environ.get("DAGGER_TASK_UPDATE_TOPIC"):
    DAGGER["TASK_UPDATE_TOPIC"] = os.environ["DAGGER_TASK_UPDATE_TOPIC"]
# The bearer token Prometheus sends to /metrics (docs/observability.md); staff users need none.
if os.environ.get("DAGGER_METRICS_TOKEN"):
    DAGGER["METRICS_TOKEN"] = os.environ["DAGGER_METRICS_TOKEN"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
