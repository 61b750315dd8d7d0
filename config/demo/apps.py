from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "config.demo"
    label = "dagger_demo"
    verbose_name = "dagger_django demo"
