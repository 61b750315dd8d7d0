"""W5 cost per transition: statements and rows written by each engine transition, counted.

Runs in-process on the benchmark database with the in-memory dispatcher, so every statement is
the engine's own. The test suite asserts a budget for the same numbers
(tests/engine/test_engine.py::test_queries_and_rows_per_transition_stay_small).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _rows(sql: str, params: Any, many: bool, rowcount: int) -> int:
    """Rows a write statement touched. Inside a psycopg pipeline the row count is not known
    until the pipeline syncs, so it is derived from the parameters: one row per parameter set
    of an ``executemany``, one per element of the arrays of an ``INSERT ... UNNEST``."""
    if many:
        return len(params)
    if "UNNEST" in sql.upper() and params:
        return len(params[0])
    return rowcount if rowcount >= 0 else 1


@contextmanager
def counting() -> Any:
    from django.db import connection

    stats = {"queries": 0, "rows_written": 0}

    def wrapper(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        result = execute(sql, params, many, context)
        head = sql.lstrip().split(None, 1)[0].upper()
        if head not in CONTROL:
            stats["queries"] += 1
        if head in ("INSERT", "UPDATE", "DELETE"):
            stats["rows_written"] += _rows(sql, params, many, context["cursor"].rowcount)
        return result

    with connection.execute_wrapper(wrapper):
        yield stats


def run() -> dict[str, dict[str, int]]:
    from dagger_django import (
        Dagger,
        DecisionTaskTemplateBuilder,
        ParallelCompositeTask,
        ParallelCompositeTaskTemplateBuilder,
        TaskOperator,
    )
    from dagger_django.engine import services
    from dagger_django.testing import engine_under_test

    from .harness import reset_tables
    from .workflows import Step, linear_template

    out: dict[str, dict[str, int]] = {}
    reset_tables()
    with engine_under_test() as (dispatcher, _clock):
        template = linear_template("BenchCost")
        template.create_instance()
        with counting() as whole:
            with counting() as c:
                wf = template.create_instance(submit_task=True)
            out["create + submit (4 nodes)"] = dict(c)
            wf_id, node_id, lease = dispatcher.runs.popleft()
            work = None
            with counting() as c:
                work = services._claim(wf.id, __import__("uuid").UUID(node_id), lease)
            out["claim (worker picks a task up)"] = dict(c)
            outcome = services._execute(work)
            with counting() as c:
                work = services._apply(work, outcome, lease=lease, claim_next=True)
            out["complete task + claim next inline"] = dict(c)
            work = services._apply(work, services._execute(work), lease=lease, claim_next=True)
            with counting() as c:
                services._apply(work, services._execute(work), lease=lease, claim_next=True)
            out["complete last task + process + workflow"] = dict(c)
        # The yardstick: every write of one 3-step workflow, from creation to completion.
        out["whole 3-step workflow, created to completed"] = dict(whole)

        # a decision: complete it, skip the other branch, start the chosen one
        from dagger_django import DAGBuilderHelper

        helper = DAGBuilderHelper(dagger_app=Dagger.app)
        left = helper.generic_executor_task_builder(task_type=Step, name="left").build()
        right = helper.generic_executor_task_builder(task_type=Step, name="right").build()
        from .decide import First

        decide = DecisionTaskTemplateBuilder(Dagger.app).set_type(First).set_name("d")
        decide.set_next(left)
        decide.set_next(right)
        process = helper.generic_process_builder(process_name="p", root_task=decide.build())
        tmpl = helper.generic_template(template_name="BenchDecision", root_process=process.build())
        tmpl.create_instance()
        wf = tmpl.create_instance(submit_task=True)
        wf_id, node_id, lease = dispatcher.runs.popleft()
        work = services._claim(wf.id, __import__("uuid").UUID(node_id), lease)
        with counting() as c:
            services._apply(work, services._execute(work), lease=lease, claim_next=False)
        out["decision (skip a branch, submit the other)"] = dict(c)
        dispatcher.runs.clear()

        group = ParallelCompositeTaskTemplateBuilder(
            Dagger.app, 4, helper.generic_executor_task_builder(task_type=Step, name="c").build()
        )
        group.set_type(ParallelCompositeTask).set_name("g").set_task_operator(TaskOperator.JOIN_ALL)
        process = helper.generic_process_builder(process_name="p", root_task=group.build())
        tmpl = helper.generic_template(template_name="BenchParallel", root_process=process.build())
        tmpl.create_instance()
        with counting() as c:
            wf = tmpl.create_instance(submit_task=True)
        out["create + submit a 4-way parallel group"] = dict(c)
        runs = list(dispatcher.runs)
        dispatcher.runs.clear()
        for wf_id, node_id, lease in runs[:-1]:
            services.node_run(workflow_id=wf_id, node_id=node_id, lease=lease)
        wf_id, node_id, lease = runs[-1]
        work = services._claim(wf.id, __import__("uuid").UUID(node_id), lease)
        with counting() as c:
            services._apply(work, services._execute(work), lease=lease, claim_next=False)
        out["last branch joins: group + process + workflow complete"] = dict(c)

        wf = template.create_instance(submit_task=True)
        dispatcher.runs.clear()
        with counting() as c:
            services.workflow_stop(workflow_id=wf.id)
        out["stop a running workflow"] = dict(c)
    reset_tables()
    return out
