"""The API's OpenAPI 3 description (drf-spectacular) and the pages that show it.

- ``schema/``: the description of dagger's endpoints only, whatever else the project serves
  (:class:`DaggerSchemaGenerator`), as YAML or, with ``Accept: application/vnd.oai.openapi+json``
  or ``?format=json``, JSON.
- ``docs/`` (Swagger UI) and ``docs/redoc/``: pages that load their scripts and styles from the
  project's static files (drf-spectacular-sidecar), never from the internet, whatever the
  project's ``SPECTACULAR_SETTINGS``. They are routed only when ``drf_spectacular`` (its page
  templates) and ``drf_spectacular_sidecar`` (the scripts) are in ``INSTALLED_APPS``
  (:func:`pages_installed`).

All three follow the API's rules: the project's ``DEFAULT_AUTHENTICATION_CLASSES`` and
``DEFAULT_PERMISSION_CLASSES``, then :class:`~dagger_django.api.permissions.CanUseTheAPI` (any
dagger permission: the description holds no workflow data), errors in the API's shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from django.apps import apps
from django.templatetags.static import static
from drf_spectacular.authentication import BasicScheme
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiYamlRenderer
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from . import authentication, errors
from .permissions import CanUseTheAPI

F = TypeVar("F", bound=Callable[..., Any])

TITLE = "dagger_django API"
DESCRIPTION = (
    "Templates and workflows of dagger_django: list, create, inspect, stop, retry, resume, "
    "re-parameterise and read the history of workflows, skip or complete their waiting tasks and "
    "fire their timers; route events to listeners, list dead letters and replay them. Errors are "
    '`{"error": <code>, "detail": <text>}`. See docs/api.md.'
)


#: The pages' Content-Security-Policy: everything from this server (Redoc's side menu, for one,
#: shows a logo from cdn.redoc.ly, which this keeps the browser from asking for). Inline scripts
#: and styles: the page templates and Redoc's styled components use them; blob: workers: Redoc's
#: search.
PAGE_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'self'",
    )
)


def describe(**kwargs: Any) -> Callable[[F], F]:
    """drf-spectacular's ``extend_schema`` for a view method, built on drf-spectacular's
    ``AutoSchema`` whatever the project's ``DEFAULT_SCHEMA_CLASS`` (``extend_schema`` otherwise
    subclasses the project's default, DRF's own ``AutoSchema`` unless the project changed it)."""

    def decorator(method: F) -> F:
        method.schema = AutoSchema  # type: ignore[attr-defined]
        decorated: F = extend_schema(**kwargs)(method)
        return decorated

    return decorator


def pages_installed() -> bool:
    """Whether the project can serve the Swagger UI and Redoc pages (templates and scripts)."""
    return apps.is_installed("drf_spectacular") and apps.is_installed("drf_spectacular_sidecar")


class ThrottledBasicScheme(BasicScheme):
    """Basic authentication with a limit on wrong passwords: basic authentication to OpenAPI."""

    target_class = "dagger_django.api.authentication.ThrottledBasicAuthentication"


class DaggerSchemaGenerator(SchemaGenerator):
    """drf-spectacular's generator, describing dagger's API views and nothing else of the project."""

    def _initialise_endpoints(self) -> None:
        from .views import DaggerAPIView

        super()._initialise_endpoints()
        self.endpoints = [
            endpoint
            for endpoint in self.endpoints
            if isinstance(getattr(endpoint[3], "cls", None), type)
            and issubclass(endpoint[3].cls, DaggerAPIView)
        ]

    def get_schema(self, request: Any = None, public: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = super().get_schema(request=request, public=public)
        schema["info"] = {**schema.get("info", {}), "title": TITLE, "description": DESCRIPTION}
        return schema


class _DaggerRules:
    """The API's authentication, permissions and error shape, for views that are not
    :class:`~dagger_django.api.views.DaggerAPIView` subclasses."""

    schema = AutoSchema()
    # Read-only pages: OPTIONS would render the HTML pages' templates with DRF's metadata (a
    # 500), and nothing else is meant to be sent here.
    http_method_names = ["get", "head"]

    def get_authenticators(self) -> list[Any]:
        return [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES]

    def get_permissions(self) -> list[BasePermission]:
        return [permission() for permission in (*api_settings.DEFAULT_PERMISSION_CLASSES, CanUseTheAPI)]

    def perform_authentication(self, request: Request) -> None:
        authentication.perform_authentication(request)

    def get_exception_handler(self) -> Callable[..., Response | None]:
        return errors.exception_handler

    def handle_exception(self, exc: Exception) -> Response:
        # Errors are JSON in the API's shape, not YAML or an HTML page.
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        request = self.request  # type: ignore[attr-defined]
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
        return response


class SchemaView(_DaggerRules, SpectacularAPIView):
    """The OpenAPI 3 description of this API: YAML, or JSON with `?format=json`."""

    @describe(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().get(request, *args, **kwargs)
        return response

    def _get_version_parameter(self, request: Request) -> None:
        # The API has no versions: `?version=` names nothing here. drf-spectacular would put it
        # in the download's file name (a header: a newline in it was a 500).
        return None

    generator_class = DaggerSchemaGenerator
    renderer_classes = [OpenApiYamlRenderer, OpenApiJsonRenderer]
    serve_public = True  # every endpoint, whatever the reader may call (it shows no data)
    urlconf = None
    patterns = None
    custom_settings = {"TITLE": TITLE, "DESCRIPTION": DESCRIPTION}


class SwaggerView(_DaggerRules, SpectacularSwaggerView):
    """Swagger UI over `schema/`, with scripts served from the project's static files."""

    url_name = "dagger_api:schema"
    title = TITLE

    @describe(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().get(request, *args, **kwargs)
        # Swagger UI asks validator.swagger.io about the schema unless told not to.
        configured = spectacular_settings.SWAGGER_UI_SETTINGS
        if isinstance(configured, str):  # a JavaScript object literal: cannot be merged
            configured = {"deepLinking": True}
        response.data["settings"] = json.dumps({**configured, "validatorUrl": None}, indent=2)
        response["Cache-Control"] = "no-store"
        response["Content-Security-Policy"] = PAGE_CSP
        return response

    @staticmethod
    def _swagger_ui_resource(filename: str) -> str:
        return static(f"drf_spectacular_sidecar/swagger-ui-dist/{filename}")

    @staticmethod
    def _swagger_ui_favicon() -> str:
        return static("drf_spectacular_sidecar/swagger-ui-dist/favicon-32x32.png")


class RedocView(_DaggerRules, SpectacularRedocView):
    """Redoc over `schema/`, with its script served from the project's static files, no web
    fonts (drf-spectacular's own page loads them from Google) and no logo from Redocly's CDN."""

    url_name = "dagger_api:schema"
    title = TITLE
    template_name = "dagger_django/api/redoc.html"

    @describe(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().get(request, *args, **kwargs)
        response["Cache-Control"] = "no-store"
        response["Content-Security-Policy"] = PAGE_CSP
        return response

    @staticmethod
    def _redoc_standalone() -> str:
        return static("drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js")


__all__ = [
    "DaggerSchemaGenerator",
    "ThrottledBasicScheme",
    "RedocView",
    "SchemaView",
    "SwaggerView",
    "describe",
    "pages_installed",
]
