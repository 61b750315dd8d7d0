from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from dagger_django.observability.views import metrics_view

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/dagger_django/workflow/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/dagger/", include("dagger_django.api.urls")),
    # Prometheus scrapes here (docs/observability.md): staff users or DAGGER["METRICS_TOKEN"].
    path("metrics", metrics_view, name="dagger-metrics"),
]
