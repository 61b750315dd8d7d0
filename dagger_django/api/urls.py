"""Routes of the HTTP API. The demo project mounts them at ``/api/dagger/``.

Workflow ids are matched as plain strings so that an id that is not a UUID gets the API's JSON
404 from the view rather than Django's HTML page from the resolver. The Swagger UI and Redoc
pages are routed only when the project installed their apps (``dagger_django.api.schema``).
"""

from __future__ import annotations

from django.urls import path

from . import schema, views

app_name = "dagger_api"

urlpatterns = [
    path("", views.ApiRootView.as_view(), name="api-root"),
    path("templates/", views.TemplateListView.as_view(), name="template-list"),
    path("templates/<str:name>/", views.TemplateDetailView.as_view(), name="template-detail"),
    path("workflows/", views.WorkflowListCreateView.as_view(), name="workflow-list"),
    path("workflows/<str:workflow_id>/", views.WorkflowDetailView.as_view(), name="workflow-detail"),
    path(
        "workflows/<str:workflow_id>/history/", views.WorkflowHistoryView.as_view(), name="workflow-history"
    ),
    path("workflows/<str:workflow_id>/stop/", views.WorkflowStopView.as_view(), name="workflow-stop"),
    path("workflows/<str:workflow_id>/retry/", views.WorkflowRetryView.as_view(), name="workflow-retry"),
    path(
        "workflows/<str:workflow_id>/runtime-parameters/",
        views.WorkflowParametersView.as_view(),
        name="workflow-runtime-parameters",
    ),
    path("workflows/<str:workflow_id>/resume/", views.WorkflowResumeView.as_view(), name="workflow-resume"),
    path(
        "workflows/<str:workflow_id>/nodes/<str:node_id>/skip/",
        views.NodeSkipView.as_view(),
        name="node-skip",
    ),
    path(
        "workflows/<str:workflow_id>/nodes/<str:node_id>/complete/",
        views.NodeCompleteView.as_view(),
        name="node-complete",
    ),
    path(
        "workflows/<str:workflow_id>/timers/<str:timer_id>/fire/",
        views.TimerFireView.as_view(),
        name="timer-fire",
    ),
    path("messages/", views.MessageListView.as_view(), name="message-list"),
    path("messages/<str:inbox_id>/replay/", views.MessageReplayView.as_view(), name="message-replay"),
    path("events/", views.EventView.as_view(), name="events"),
    path("health/", views.HealthView.as_view(), name="health"),
    path("schema/", schema.SchemaView.as_view(), name="schema"),
]

if schema.pages_installed():
    urlpatterns += [
        path("docs/", schema.SwaggerView.as_view(), name="docs"),
        path("docs/redoc/", schema.RedocView.as_view(), name="redoc"),
    ]
