from __future__ import annotations

from django.apps import AppConfig


class DaggerDjangoConfig(AppConfig):
    name = "dagger_django"
    verbose_name = "Dagger workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from . import checks  # noqa: F401  (registers system checks)

        # Templates are registered by importing each installed app's ``workflows`` module, the
        # way the admin discovers ``admin`` modules. No database access happens here.
        autodiscover_modules("workflows")
