from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/dagger_django/workflow/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/dagger/", include("dagger_django.api.urls")),
    # The original wf-dagger's endpoints, at its paths (docs/porting.md).
    path("", include("dagger_django.api.compat_urls")),
]
