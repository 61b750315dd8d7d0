"""Log lines about a node name its workflow id and business key (engine/logs.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ..engine import builders as b
from ..engine import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_failing_executor_log_line_names_the_workflow_id_and_business_key(
    engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher, _ = engine
    tmpl = b.linear("ObsLogged", (t.Boom, "boom"))
    wf = tmpl.create_instance(submit_task=True, partition_key_lookup="order_id", order_id="order-314")
    with caplog.at_level(logging.WARNING, logger="dagger_django"):
        dispatcher.drain()
    (record,) = [r for r in caplog.records if "raised" in r.getMessage() and "boom" in r.getMessage()]
    assert str(wf.id) in record.getMessage()
    assert "order-314" in record.getMessage()
    assert record.dagger_workflow_id == str(wf.id)
    assert record.dagger_business_key == "order-314"
    assert record.dagger_node.endswith("boom_executor_task")
