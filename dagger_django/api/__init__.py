"""The HTTP API of dagger_django (Django REST framework): templates, workflows and health.

Include ``dagger_django.api.urls`` in a project's URLconf (the demo project mounts it at
``/api/dagger/``). Routes are named in the ``dagger_api`` namespace.
"""
