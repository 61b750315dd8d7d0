from __future__ import annotations

from django.apps import AppConfig


class DaggerDjangoConfig(AppConfig):
    name = "dagger_django"
    verbose_name = "Dagger workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate
        from django.utils.module_loading import autodiscover_modules

        from . import checks  # noqa: F401  (registers system checks)
        from .beat import on_post_migrate
        from .definitions import engine_door
        from .definitions.registry import set_schema_registry_factory
        from .engine import services
        from .kafka.schema_registry import schema_registry_build

        # The facade (create_instance, Dagger.submit/stop/get_instance, Topic.send) reaches the
        # engine through this one door; the definitions never import the engine.
        engine_door.connect(services)

        # Dagger.app.schema_registry_client / message_serializer (the optional avro extra).
        set_schema_registry_factory(schema_registry_build)

        # dagger's celery-beat entries (timer sweep, recovery sweep), registered idempotently.
        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="dagger_django.beat_setup")

        # Metrics and traces, when their extras are installed (docs/observability.md).
        from . import observability

        observability.install()

        # Templates are registered by importing each installed app's ``workflows`` module, the
        # way the admin discovers ``admin`` modules. No database access happens here.
        autodiscover_modules("workflows")
