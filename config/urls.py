from django.contrib import admin
from django.urls import include, path

from config.demo.views import index
from dagger_django.observability.views import metrics_view

urlpatterns = [
    # The demo's own page (templates/demo/index.html): links to the admin, the API and its docs.
    path("", index, name="demo-index"),
    path("admin/", admin.site.urls),
    path("api/dagger/", include("dagger_django.api.urls")),
    # Prometheus scrapes here (docs/observability.md): staff users or DAGGER["METRICS_TOKEN"].
    path("metrics", metrics_view, name="dagger-metrics"),
    # The original wf-dagger's endpoints, at its paths (docs/porting.md).
    path("", include("dagger_django.api.compat_urls")),
]
