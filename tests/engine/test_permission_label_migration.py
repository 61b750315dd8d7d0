"""Migration 0013 renames the ``operate_workflow`` permission of an installed database (Django
creates missing permissions after migrating but never renames existing ones)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission

from .conftest import migrate, restore_latest_schema

BEFORE = ("dagger_django", "0012_node_state_in_workflow")
AFTER = ("dagger_django", "0013_operate_workflow_permission_label")
OLD = "Can create, stop, retry, edit parameters of and replay workflows"


@pytest.mark.django_db(transaction=True)
def test_the_operate_permission_gets_its_new_label_and_back(transactional_db: Any) -> None:
    current = Permission.objects.get(codename="operate_workflow", content_type__app_label="dagger_django")
    assert current.name != OLD and "resume" in current.name
    try:
        migrate(BEFORE)
        assert Permission.objects.get(pk=current.pk).name == OLD
        migrate(AFTER)
        assert Permission.objects.get(pk=current.pk).name == current.name
    finally:
        restore_latest_schema()
