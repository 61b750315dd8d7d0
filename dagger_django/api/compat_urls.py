"""Routes of the original wf-dagger's endpoints (:mod:`dagger_django.api.compat`), at the paths
the original used. Mount them at the project's root::

    path("", include("dagger_django.api.compat_urls")),

A trailing slash is accepted too; ids are matched as plain strings so that one that is not a
UUID gets the API's JSON 404 from the view.
"""

from __future__ import annotations

from django.urls import re_path

from . import compat

app_name = "dagger_compat"

urlpatterns = [
    re_path(r"^service/ready/?$", compat.ServiceReadyView.as_view(), name="service-ready"),
    re_path(r"^tasks/instance/(?P<dag_id>[^/]+)/?$", compat.TaskInstanceView.as_view(), name="task-instance"),
    re_path(r"^tasks/instances/?$", compat.TaskInstancesView.as_view(), name="task-instances"),
]
