# shop/urls.py
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/dagger/", include("dagger_django.api.urls")),
]
