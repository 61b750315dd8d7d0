"""Suite-wide fixtures: a real Celery worker process on the test database.

``make test`` points the suite at the local PostgreSQL (DATABASE_URL) and Redis (CELERY_BROKER_URL).
Tests that need work to be executed by Celery request ``celery_worker_process``: one worker for the
whole session, consuming a queue of its own, connected to pytest-django's test database. Such tests
must be transactional (``@pytest.mark.django_db(transaction=True)``): the worker only sees
committed rows. They wait for outcomes with :func:`tests.helpers.wait_for`, never with a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.tracing import TRACE_FILE_VARIABLE

ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 100
WORKER_START_TIMEOUT = 60.0
WORKER_STOP_TIMEOUT = 20.0
#: How long a test's teardown waits for the worker to finish what the test left running.
WORKER_IDLE_TIMEOUT = 30.0
#: Modules the test worker imports besides the project's tasks (tasks that only tests use).
WORKER_TEST_MODULES = ("tests.worker_tasks",)
#: Brokers that carry Celery's remote control (the readiness ping needs it) across processes.
REAL_BROKERS = ("redis", "rediss", "amqp", "amqps", "pyamqp")


@dataclass
class WorkerProcess:
    """The running test worker: what a test may need to know about it."""

    proc: subprocess.Popen[bytes]
    queue: str
    nodename: str
    log_path: Path
    database_url: str
    #: ``PROMETHEUS_MULTIPROC_DIR`` of the worker: its processes write their metrics there.
    metrics_dir: Path | None = None
    #: Where the worker writes its finished trace spans, one JSON object a line (tests/tracing.py).
    trace_file: Path | None = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(worker log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(worker log is empty)"

    def assert_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            pytest.fail(
                f"the Celery test worker exited with code {code}; its log ends with:\n{self.log_tail()}"
            )


_worker_key = pytest.StashKey[WorkerProcess]()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Selenium, for tests of pages (with pytest-django's
    ``live_server``), keeping DevTools' network log. Skips when Chromium or chromedriver is
    missing (``make test`` installs them)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("Chromium and chromedriver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    # DevTools' network log, for tests that check what a page fetched (helpers.browser_requests).
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Kafka-protocol broker (Tansu, tests/kafka/broker.py), once per session.

    This process's ``settings.DAGGER`` points at it for the session, and so do the worker and
    the bridges started by the tests (through their environment).
    """
    from django.conf import settings

    from tests.kafka.broker import start_broker

    broker = start_broker(tmp_path_factory.mktemp("kafka") / "tansu.log")
    previous = settings.DAGGER
    settings.DAGGER = {**previous, **broker.settings()}
    try:
        yield broker
    finally:
        settings.DAGGER = previous
        from dagger_django.kafka.producer import close_producer

        close_producer()
        broker.stop()


@pytest.fixture(scope="session")
def span_exporter() -> Any:
    """This process's spans, kept in memory (an SDK tracer provider, set once per process)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(span_exporter: Any) -> Any:
    span_exporter.clear()
    return span_exporter


@pytest.fixture(scope="session")
def celery_worker_process(
    request: pytest.FixtureRequest,
    django_db_setup: None,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_broker: Any,
) -> Iterator[WorkerProcess]:
    """Start one real worker (prefork, 2 processes) for the session and stop it at the end.

    It consumes a queue named for this session only, so concurrent runs on the same Redis never
    steal each other's messages, and this process routes its own sends there by making that queue
    the Celery app's default. The test database exists once ``django_db_setup`` has run; its name
    (``test_...``) is then in the connection's settings and goes to the worker as DATABASE_URL.
    """
    from django.conf import settings
    from django.db import connection

    from config.celery import app

    _require_real_services(connection.vendor, settings.CELERY_BROKER_URL)

    queue = f"dagger-test-{uuid.uuid4().hex[:12]}"
    nodename = f"{queue}@{socket.gethostname()}"
    database_url = _database_url(connection.settings_dict)
    log_path = tmp_path_factory.mktemp("celery-worker") / "worker.log"
    metrics_dir = tmp_path_factory.mktemp("worker-metrics")
    trace_file = log_path.with_name("spans.jsonl")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_QUEUE": queue,
        "PYTHONUNBUFFERED": "1",
        **kafka_broker.env,  # command tasks relay their messages to the test broker
        # docs/observability.md: the worker's processes count into files there (prometheus_client's
        # multiprocess mode), and export their spans to a file (tests/tracing.py).
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        TRACE_FILE_VARIABLE: str(trace_file),
    }
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "-l",
        os.environ.get("DAGGER_TEST_WORKER_LOGLEVEL", "warning"),
        "--pool=prefork",
        "--concurrency=2",
        "-Q",
        queue,
        "-n",
        nodename,
        "--include",
        ",".join(WORKER_TEST_MODULES),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]

    _queue_purge(app, queue)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(
        proc=proc,
        queue=queue,
        nodename=nodename,
        log_path=log_path,
        database_url=database_url,
        metrics_dir=metrics_dir,
        trace_file=trace_file,
    )
    request.config.stash[_worker_key] = worker
    previous_default_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    try:
        _wait_until_ready(app, worker)
        yield worker
    finally:
        app.conf.task_default_queue = previous_default_queue
        clean = _stop(worker)
        _queue_delete(app, queue)
        if not clean:
            _report(request, f"the Celery test worker did not stop cleanly; log tail:\n{worker.log_tail()}")


@pytest.fixture
def engine(transactional_db: Any) -> Iterator[Any]:
    """The real engine with an in-memory dispatcher and a frozen clock: ``(dispatcher, clock)``
    (the same as ``tests/engine``'s, for the page tests)."""
    from dagger_django.testing import engine_under_test

    with engine_under_test() as pair:
        yield pair


@pytest.fixture(autouse=True)
def _worker_idle_before_flush(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the worker, wait until the worker has nothing running or reserved.

    A test may end while the worker still finishes something of it (e.g. discarding the late
    result of a task the test stopped). pytest-django then empties the tables with ``TRUNCATE``,
    which PostgreSQL can find deadlocked with that transaction. This fixture is set up after
    pytest-django's own autouse database fixture, so its teardown runs before the flush.
    """
    yield
    if "celery_worker_process" not in request.fixturenames:
        return
    worker = request.config.stash.get(_worker_key, None)
    if worker is None or worker.proc.poll() is not None:
        return
    from config.celery import app

    deadline = time.monotonic() + WORKER_IDLE_TIMEOUT
    while time.monotonic() < deadline:
        inspect = app.control.inspect(destination=[worker.nodename], timeout=1.0, limit=1)
        busy = [
            (inspect.active() or {}).get(worker.nodename),
            (inspect.reserved() or {}).get(worker.nodename),
        ]
        if busy[0] == [] and busy[1] == []:
            return
        time.sleep(0.05)
    print(
        f"\nthe Celery test worker was still busy {WORKER_IDLE_TIMEOUT:.0f}s after the test", file=sys.stderr
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the worker's recent log to every failing test that used the worker."""
    report = yield
    # A worker that fails to start reports its log in the setup error already.
    if (
        report.when == "call"
        and report.failed
        and "celery_worker_process" in getattr(item, "fixturenames", ())
    ):
        worker = item.config.stash.get(_worker_key, None)
        if worker is not None:
            title = f"Celery worker log, last {LOG_TAIL_LINES} lines ({worker.log_path})"
            report.sections.append((title, worker.log_tail()))
    return report


# --- helpers -------------------------------------------------------------------------------------


def _require_real_services(vendor: str, broker_url: str) -> None:
    problems = []
    if vendor != "postgresql":
        problems.append(f"the database is {vendor}; set DATABASE_URL=postgres://...")
    if urlsplit(broker_url).scheme not in REAL_BROKERS:
        problems.append(f"the broker is {broker_url!r}; set CELERY_BROKER_URL=redis://...")
    if problems:
        message = "a real Celery worker needs shared services (`make test` sets them): " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _database_url(settings_dict: dict[str, Any]) -> str:
    """A DATABASE_URL for the worker: the same server and credentials, the test database's name."""
    user = quote(str(settings_dict.get("USER") or ""), safe="")
    password = settings_dict.get("PASSWORD")
    credentials = f"{user}:{quote(str(password), safe='')}" if password else user
    host = str(settings_dict.get("HOST") or "localhost")
    port = settings_dict.get("PORT")
    netloc = f"{credentials}@{host}" if credentials else host
    if port:
        netloc += f":{port}"
    return f"postgres://{netloc}/{quote(str(settings_dict['NAME']), safe='')}"


def _wait_until_ready(app: Any, worker: WorkerProcess) -> None:
    """Ping the worker by name until it answers: it then consumes its queue."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline:
        worker.assert_alive()
        if app.control.ping(destination=[worker.nodename], timeout=1.0):
            return
    pytest.fail(
        f"the Celery test worker did not answer a ping within {WORKER_START_TIMEOUT:.0f}s; "
        f"its log ends with:\n{worker.log_tail()}"
    )


def _stop(worker: WorkerProcess) -> bool:
    """SIGTERM (Celery's warm shutdown), then SIGKILL the whole process group. True when clean."""
    proc = worker.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WORKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    clean = proc.poll() == 0
    try:  # pool processes left behind by a worker that died or hung
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)
    return clean


def _queue_purge(app: Any, queue: str) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def _queue_delete(app: Any, queue: str) -> None:
    """Remove the session's queue and its binding from the broker.

    The queue is declared first: kombu only deletes bindings its channel knows about.
    """
    from kombu import Exchange, Queue

    try:
        with app.connection_for_write() as conn:
            bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)(conn.default_channel)
            bound.declare()
            bound.delete()
    except Exception:  # best effort: a leftover empty queue on the test broker harms nobody
        pass


def _report(request: pytest.FixtureRequest, message: str) -> None:
    """Write to the terminal even from a session fixture's teardown, where output is captured."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(message, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n{message}", file=sys.stderr)
