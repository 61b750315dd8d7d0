from __future__ import annotations

from django.db import models


class WorkflowTemplate(models.Model):
    """One version of a registered workflow template: its serialised graph and the graph's digest.

    A new digest under the same name is a new version. Workflows point at the version they were
    created from and keep it for their whole life.
    """

    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    digest = models.CharField(max_length=64)
    graph = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="dagger_template_name_version_uniq"),
            models.UniqueConstraint(fields=["name", "digest"], name="dagger_template_name_digest_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"
