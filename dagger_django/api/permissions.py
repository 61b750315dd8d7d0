"""Who may read and who may act through the API (docs/api.md#permissions).

Reading workflows and templates needs the view permission of the workflow model; acting needs a
permission of its own, declared on :class:`~dagger_django.models.Workflow`:

- ``dagger_django.view_workflow``: list and read workflows and templates;
- ``dagger_django.operate_workflow``: create, stop, retry, resume, edit runtime parameters, skip
  or complete a task, fire a timer, replay a message;
- ``dagger_django.post_event``: ``POST events/`` (route a message as if it came from Kafka).

The views check these classes *after* the project's ``DEFAULT_PERMISSION_CLASSES`` (see
``DaggerAPIView.get_permissions``), so a project that asks more (an IP allow-list, 2FA) keeps it.
A project may also use these classes in views of its own.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

VIEW_WORKFLOW = "dagger_django.view_workflow"
OPERATE_WORKFLOW = "dagger_django.operate_workflow"
POST_EVENT = "dagger_django.post_event"


class DaggerPermission(BasePermission):
    """An authenticated, active user holding every permission in ``required``."""

    required: tuple[str, ...] = ()

    @property
    def message(self) -> str:  # type: ignore[override]
        # Names what is missing so that an administrator knows what to grant; reveals no data.
        return "This needs the permission(s) " + ", ".join(self.required) + "."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perms(self.required))


class CanViewWorkflows(DaggerPermission):
    """Read workflows and templates."""

    required = (VIEW_WORKFLOW,)


class CanOperateWorkflows(DaggerPermission):
    """Act on workflows. The view permission too: every action answers with the workflow."""

    required = (VIEW_WORKFLOW, OPERATE_WORKFLOW)


class CanPostEvents(DaggerPermission):
    """Route a message through ``POST events/`` (its answer holds no workflow data)."""

    required = (POST_EVENT,)


class CanUseTheAPI(DaggerPermission):
    """Any one of dagger's permissions: for what describes the API and holds no workflow data
    (the root, the schema and its pages)."""

    required = (VIEW_WORKFLOW, OPERATE_WORKFLOW, POST_EVENT)

    @property
    def message(self) -> str:  # type: ignore[override]
        return "This needs one of the permissions " + ", ".join(self.required) + "."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and any(user.has_perm(name) for name in self.required))


class WorkflowAccess(BasePermission):
    """Reading (GET, HEAD, OPTIONS) as :class:`CanViewWorkflows`, anything else as
    :class:`CanOperateWorkflows`."""

    def _delegate(self, request: Request) -> DaggerPermission:
        return CanViewWorkflows() if request.method in SAFE_METHODS else CanOperateWorkflows()

    def has_permission(self, request: Request, view: Any) -> bool:
        delegate = self._delegate(request)
        self.message = delegate.message
        return delegate.has_permission(request, view)


__all__ = [
    "OPERATE_WORKFLOW",
    "POST_EVENT",
    "VIEW_WORKFLOW",
    "CanOperateWorkflows",
    "CanPostEvents",
    "CanUseTheAPI",
    "CanViewWorkflows",
    "DaggerPermission",
    "WorkflowAccess",
]
