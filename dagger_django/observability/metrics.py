"""Prometheus metrics of the engine, the bridge and the backlog (docs/observability.md).

Two sources, for a fleet of processes:

* **Events** (workflows started and finished, node transitions, durations, retries, bridge
  batches) are counted where they happen: in the Celery workers, the bridges and the web
  processes, after commit (a commit observer, ``engine.ports.observer_add``), so a transaction
  that rolls back counts nothing. With ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus_client's
  multiprocess mode), every process of a host writes its counters to files there and the
  endpoint of any process of that host adds them up; without it, each process counts for itself.
* **Backlog gauges** (running, stuck, waiting listeners, due and late timers, outbox, dead
  letters) are read from the database when the endpoint is scraped (``selectors.backlog_get``:
  bounded, index-backed counts). They are fleet-wide: scraping any one endpoint gives them.

Nothing here imports ``prometheus_client`` before :func:`install` found it installed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..conf import dagger_settings
from ..models.status import TERMINAL, Status

logger = logging.getLogger("dagger_django.observability")
S = Status

#: Node and workflow durations: from 10 ms to a day (a listener or a timer may wait hours).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
#: Bridge lag: from the message's Kafka timestamp to the commit of its routing.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_metrics: Metrics | None = None


def available() -> bool:
    """Whether ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def install() -> Metrics | None:
    """Create the metrics and register their commit observer, when ``prometheus_client`` is
    installed and ``DAGGER['METRICS']`` is true; else do nothing. Idempotent."""
    global _metrics
    if _metrics is not None:
        return _metrics
    if not dagger_settings.METRICS:
        return None
    try:
        import prometheus_client
    except ImportError:
        return None
    from ..engine import ports

    try:
        _metrics = Metrics(prometheus_client)
    except OSError as exc:  # PROMETHEUS_MULTIPROC_DIR is not a directory (check dagger_django.E061)
        logger.error("metrics are off in this process: %s", exc)
        return None
    ports.observer_add(_metrics.committed)
    return _metrics


def get() -> Metrics | None:
    """The process's metrics, or None when they are off (not installed, or disabled)."""
    return _metrics


class Metrics:
    """The event metrics of one process (registered in prometheus_client's default registry)."""

    def __init__(self, prometheus_client: Any) -> None:
        counter, histogram = prometheus_client.Counter, prometheus_client.Histogram
        self.workflows_started = counter(
            "dagger_workflows_started", "Workflows submitted (started executing).", ["template"]
        )
        self.workflows_completed = counter(
            "dagger_workflows_completed", "Workflows that completed.", ["template"]
        )
        self.workflows_failed = counter(
            "dagger_workflows_failed", "Workflows that failed (halted by a failed node).", ["template"]
        )
        self.workflows_stopped = counter("dagger_workflows_stopped", "Workflows stopped.", ["template"])
        self.workflows_retried = counter(
            "dagger_workflows_retried", "Failed workflows retried by an operator.", ["template"]
        )
        self.workflow_duration = histogram(
            "dagger_workflow_duration_seconds",
            "From submission to the end of a workflow, by how it ended.",
            ["template", "status"],
            buckets=DURATION_BUCKETS,
        )
        self.transitions = counter(
            "dagger_node_transitions",
            "Status changes of nodes (processes, groups and tasks), by node kind and new status.",
            ["kind", "status"],
        )
        self.node_duration = histogram(
            "dagger_node_duration_seconds",
            "From the start of a node's (last) execution to its end.",
            ["template", "kind"],
            buckets=DURATION_BUCKETS,
        )
        self.retries = counter(
            "dagger_node_retries", "Retries scheduled for tasks whose hook raised.", ["template", "kind"]
        )
        self.bridge_messages = counter(
            "dagger_bridge_messages",
            "Kafka messages the bridge routed, by outcome (routed, unmatched, invalid, duplicate).",
            ["status"],
        )
        self.bridge_batches = counter("dagger_bridge_batches", "Batches the bridge routed and committed.")
        self.bridge_lag = histogram(
            "dagger_bridge_lag_seconds",
            "From a message's Kafka timestamp to the commit of its routing.",
            buckets=LAG_BUCKETS,
        )

        #: Labelled children by (metric, labels): ``labels()`` takes a lock and builds a key on
        #: each call; the commit observer runs on every transition, so it asks once per label set.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- events ---------------------------------------------------------------------------------------
    def committed(self, state: Any) -> None:
        """The commit observer: count what the committed transition ``state`` changed."""
        changes = state.changes
        if not changes:
            return
        wf = state.workflow
        template = wf.template_name
        for node, frm, to in changes:
            if node is None:
                self._workflow_changed(wf, template, frm, to)
                continue
            kind = node.kind
            self._child(self.transitions, kind, to).inc()
            if to == S.SUBMITTED and frm == S.EXECUTING:
                self._child(self.retries, template, kind).inc()
            elif to in TERMINAL and node.time_submitted is not None and node.time_completed is not None:
                seconds = (node.time_completed - node.time_submitted).total_seconds()
                self._child(self.node_duration, template, kind).observe(max(0.0, seconds))

    def _workflow_changed(self, wf: Any, template: str, frm: str, to: str) -> None:
        if to == S.EXECUTING:
            self._child(
                self.workflows_retried if frm == S.FAILURE else self.workflows_started, template
            ).inc()
            return
        ended = {
            S.COMPLETED: self.workflows_completed,
            S.FAILURE: self.workflows_failed,
            S.STOPPED: self.workflows_stopped,
        }.get(to)
        if ended is not None:
            self._child(ended, template).inc()
        if wf.time_submitted is not None and wf.time_completed is not None:
            seconds = (wf.time_completed - wf.time_submitted).total_seconds()
            self._child(self.workflow_duration, template, to).observe(max(0.0, seconds))

    def bridge_batch(self, statuses: list[str], lags: list[float]) -> None:
        """A batch the bridge committed: each message's outcome and lag (seconds)."""
        self.bridge_batches.inc()
        for status in statuses:
            self._child(self.bridge_messages, status).inc()
        for lag in lags:
            self.bridge_lag.observe(max(0.0, lag))


# -- the scrape -------------------------------------------------------------------------------------
def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` (or its old name), read at each scrape: where this host's
    processes write their counters."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


def exposition() -> tuple[bytes, str]:
    """The text a scrape receives (Prometheus text format) and its content type: this host's
    event metrics (every process's, in multiprocess mode; else this process's) and the backlog
    gauges, read from the database now."""
    import prometheus_client
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    path = multiprocess_dir()
    if path:
        from prometheus_client import multiprocess

        events = CollectorRegistry()
        multiprocess.MultiProcessCollector(events, path=path)
    else:
        events = prometheus_client.REGISTRY
    backlog = CollectorRegistry()
    backlog.register(BacklogCollector())
    return generate_latest(events) + generate_latest(backlog), CONTENT_TYPE_LATEST


def serve(*, addr: str, port: int, path: str, backlog: bool = True) -> Any:
    """Serve the counters of this host's processes (the files in ``path``) and, with ``backlog``,
    the backlog gauges, on ``http://addr:port/`` in a background thread (``manage.py
    dagger_metrics``). Returns the server (``shutdown()`` stops it)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    if backlog:
        registry.register(BacklogCollector(own_thread=True))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server


class BacklogCollector:
    """Gauges read from the database at each scrape (``selectors.backlog_get``).

    ``own_thread``: each scrape runs in a thread of its own (``serve``), whose database
    connection is closed when the scrape is done instead of being left open.
    """

    def __init__(self, *, own_thread: bool = False) -> None:
        self.own_thread = own_thread

    GAUGES = (
        ("workflows_running", "dagger_workflows_running", "Workflows executing now."),
        (
            "workflows_stuck",
            "dagger_workflows_stuck",
            "Workflows executing for longer than DAGGER['METRICS_STUCK_SECONDS'] since submission.",
        ),
        ("listeners_waiting", "dagger_listeners_waiting", "Listener tasks waiting for their message."),
        ("timers_due", "dagger_timers_due", "Pending timers whose due time has come."),
        ("timers_late", "dagger_timers_late", "Pending timers overdue by more than the late threshold."),
        ("outbox_pending", "dagger_outbox_backlog", "Outbox messages not sent yet."),
        ("outbox_dead", "dagger_outbox_dead", "Outbox messages whose attempts are exhausted."),
        ("inbox_dead_letters", "dagger_inbox_dead_letters", "Incoming messages kept as dead letters."),
    )

    def collect(self) -> Any:
        if not self.own_thread:
            yield from self._collect()
            return
        from django.db import connections

        try:
            yield from self._collect()
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()

    def _collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from ..engine import ports, selectors

        late = dagger_settings.METRICS_LATE_TIMER_SECONDS
        if late is None:
            late = 2 * float(dagger_settings.TRIGGER_INTERVAL)
        backlog = selectors.backlog_get(
            now=ports.now(),
            stuck_after=float(dagger_settings.METRICS_STUCK_SECONDS),
            late_after=float(late),
            limit=int(dagger_settings.METRICS_COUNT_LIMIT),
        )
        for field, name, text in self.GAUGES:
            yield GaugeMetricFamily(name, text, value=getattr(backlog, field))
        yield GaugeMetricFamily(
            "dagger_timer_oldest_due_age_seconds",
            "How long the oldest due timer has been waiting (0: none).",
            value=backlog.timer_oldest_due_age,
        )
        yield GaugeMetricFamily(
            "dagger_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox message not sent yet (0: none).",
            value=backlog.outbox_oldest_pending_age,
        )
        yield GaugeMetricFamily(
            "dagger_backlog_count_limit",
            "The most rows a backlog gauge counts (DAGGER['METRICS_COUNT_LIMIT']).",
            value=backlog.limit,
        )
