"""docs/install.md, followed as a new user would: a wheel built from this repository, installed
into a fresh virtualenv outside it, a fresh ``django-admin startproject shop``, the files the page
tells a user to write (tests/install_project/, shown verbatim by the page), its own PostgreSQL
database, a worker and beat from that virtualenv, and a workflow run to its end through the
facade and through the API.

Nothing of the repository is importable by those processes: they run in the fresh project's
directory with the fresh virtualenv's interpreter. pip resolves the dependencies through this
machine's configuration (its local index and wheel directories first, then its cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..helpers import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "tests" / "install_project"
#: What the wheel is built from (pyproject.toml's package data and metadata files).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "dagger_django")
#: Variables of this test run that must not reach the fresh project's processes.
FOREIGN = re.compile(r"^(DJANGO_|DATABASE_URL$|CELERY_|DAGGER_|KAFKA_|PYTHONPATH$|VIRTUAL_ENV$)")
PIP_TIMEOUT = 300.0
COMMAND_TIMEOUT = 120.0
WORKFLOW_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
LOG_TAIL = 60
USERNAME, PASSWORD = "operator", "operator-pw-" + uuid.uuid4().hex[:8]


@dataclass
class Shop:
    """The fresh project: where it lives, how to run its commands, what it started."""

    root: Path
    venv: Path
    env: dict[str, str]
    logs: Path
    timings: dict[str, float] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run(self, *argv: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        result = subprocess.run(
            argv,
            cwd=self.root,
            env=env or self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        output = result.stdout + result.stderr
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(argv)} exited with {result.returncode}:\n{output[-6000:]}")
        return output

    def manage(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        return self.run(self.python, "manage.py", *args, env=env, check=check)

    def start(self, name: str, *argv: str) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                argv,
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with its children
            )

    def log(self, name: str) -> str:
        try:
            lines = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"({name} log unreadable: {exc})"
        return "\n".join(lines[-LOG_TAIL:]) or f"({name} log is empty)"

    def assert_running(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}; its log ends with:\n{self.log(name)}")

    def describe(self) -> str:
        return "\n\n".join(f"--- {name} log ---\n{self.log(name)}" for name in self.processes)

    def stop_all(self) -> None:
        for proc in self.processes.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # children a stopped parent left behind
            proc.wait(timeout=10)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _timed(shop: Shop, stage: str, started: float) -> None:
    shop.timings[stage] = round(time.monotonic() - started, 1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the database, the broker queue --------------------------------------------------------------
def _postgres(settings_dict: dict[str, Any]) -> Any:
    import psycopg

    return psycopg.connect(
        dbname="postgres",
        host=settings_dict.get("HOST") or "localhost",
        port=settings_dict.get("PORT") or 5432,
        user=settings_dict.get("USER") or None,
        password=settings_dict.get("PASSWORD") or None,
        autocommit=True,
    )


@pytest.fixture
def shop_database() -> Iterator[dict[str, str]]:
    """A database of the fresh project's own on the test server, dropped afterwards; the
    variables the install page's settings read it from."""
    from django.conf import settings
    from django.db import connection

    from ..conftest import _require_real_services

    _require_real_services(connection.vendor, settings.CELERY_BROKER_URL)
    conf = connection.settings_dict
    name = f"dagger_shop_{uuid.uuid4().hex[:10]}"
    with _postgres(conf) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "DB_NAME": name,
            "DB_USER": str(conf.get("USER") or ""),
            "DB_PASSWORD": str(conf.get("PASSWORD") or ""),
            "DB_HOST": str(conf.get("HOST") or "localhost"),
            "DB_PORT": str(conf.get("PORT") or 5432),
        }
    finally:
        with _postgres(conf) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def shop_queue() -> Iterator[str]:
    """A Celery queue of this test only on the test broker (concurrent runs share Redis)."""
    from config.celery import app

    from ..conftest import _queue_delete

    queue = f"dagger-install-{uuid.uuid4().hex[:12]}"
    try:
        yield queue
    finally:
        _queue_delete(app, queue)


# -- the steps of docs/install.md ----------------------------------------------------------------
def _build_wheel(workdir: Path) -> Path:
    """``pip wheel`` of a copy of the sources, so the build leaves nothing in the repository."""
    source = workdir / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    wheels = workdir / "wheels"
    output = _pip(sys.executable, "wheel", "--verbose", "--no-deps", "--wheel-dir", str(wheels), str(source))
    assert "project.license" not in output, output  # setuptools' warning about the license's form
    (wheel,) = wheels.glob("dagger_django-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        dist_info = next(n.split("/")[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        assert "MIT License" in archive.read(f"{dist_info}/licenses/LICENSE").decode()
        assert "License-Expression: MIT" in archive.read(f"{dist_info}/METADATA").decode().splitlines()
    return wheel


def _pip(python: str, *args: str) -> str:
    argv = [python, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PIP_TIMEOUT
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited with {result.returncode}:\n{(result.stdout + result.stderr)[-6000:]}"
        )
    return result.stdout + result.stderr


def _write_project_files(shop: Shop, queue: str) -> None:
    """Step 3 of docs/install.md: the end of settings.py, urls.py and the first workflow module."""
    settings_py = shop.root / "shop" / "settings.py"
    settings_py.write_text(
        settings_py.read_text()
        + "\n\n"
        + (TEMPLATES / "settings.py").read_text()
        + "\n# This test only: a queue of its own on the shared test broker.\n"
        + f"CELERY_TASK_DEFAULT_QUEUE = {queue!r}\n"
    )
    shutil.copy2(TEMPLATES / "shop" / "urls.py", shop.root / "shop" / "urls.py")
    shutil.copy2(TEMPLATES / "orders" / "workflows.py", shop.root / "orders" / "workflows.py")


def _write_celery_app(shop: Shop) -> None:
    for name in ("celery.py", "__init__.py"):
        shutil.copy2(TEMPLATES / "shop" / name, shop.root / "shop" / name)


GRANT = f"""
from django.contrib.auth.models import Permission, User
user = User.objects.create_user({USERNAME!r}, password={PASSWORD!r})
user.user_permissions.add(*Permission.objects.filter(
    content_type__app_label="dagger_django", codename__in=["operate_workflow", "view_workflow"]))
"""

START_ORDER = """
from dagger_django import Dagger
instance = Dagger.get_template("OrderWorkflow").create_instance(
    partition_key_lookup="order_id", submit_task=True, order_id="o-1"
)
print("workflow", instance.id)
"""


class Api:
    def __init__(self, base: str) -> None:
        self.base = base
        token = b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=self.headers if auth else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def healthy(self) -> bool:
        try:
            status, _ = self.call("GET", "health/", auth=False)
        except OSError:  # not listening yet
            return False
        return status == 200


def _completed(shop: Shop, api: Api, workflow_id: str) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def done() -> bool:
        shop.assert_running()
        status, body = api.call("GET", f"workflows/{workflow_id}/")
        assert status == 200, body
        state.update(body)
        return bool(body["status"] == "COMPLETED")

    wait_for(
        done,
        timeout=WORKFLOW_TIMEOUT,
        interval=0.2,
        message=lambda: (
            f"workflow {workflow_id} to complete (now {state.get('status')}, "
            f"tasks {[(t['name'], t['status'], t['error']) for t in state.get('tasks', [])]})\n{shop.describe()}"
        ),
    )
    return state


def test_the_install_page_makes_a_fresh_project_run_workflows(
    tmp_path: Path, shop_database: dict[str, str], shop_queue: str
) -> None:
    from django.conf import settings

    started = time.monotonic()
    wheel = _build_wheel(tmp_path)
    shop = Shop(root=tmp_path / "shop", venv=tmp_path / "venv", env={}, logs=tmp_path / "logs")
    _timed(shop, "wheel", started)

    # 1. A fresh virtualenv, the wheel with the postgres and redis extras.
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(shop.venv)], check=True, timeout=COMMAND_TIMEOUT)
    _pip(shop.python, "install", f"{wheel}[postgres,redis]")
    _timed(shop, "venv + pip install", started)

    started = time.monotonic()
    shop.root.mkdir()
    shop.logs.mkdir()
    base_env = {k: v for k, v in os.environ.items() if not FOREIGN.match(k)}
    base_env.update(
        PATH=f"{shop.venv / 'bin'}{os.pathsep}{base_env.get('PATH', '')}",
        VIRTUAL_ENV=str(shop.venv),
        PYTHONUNBUFFERED="1",
        **shop_database,
    )
    shop.env = {**base_env, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    shop.run(str(shop.venv / "bin" / "django-admin"), "startproject", "shop", ".")
    # 2. An app for the workflows, 3. settings, URLs, the workflow module.
    shop.manage("startapp", "orders")
    _write_project_files(shop, shop_queue)

    # Without the Celery app of step 4, dagger's sends would go to amqp://guest@localhost//:
    # the check says so instead of passing.
    output = shop.manage("check", env=base_env, check=False)
    assert "dagger_django.E050" in output, output
    _write_celery_app(shop)
    output = shop.manage("check")
    assert "System check identified no issues" in output, output

    # 5. migrate (it also registers dagger's beat entries), and a user who may operate workflows.
    shop.manage("migrate", "--no-input")
    shop.manage("shell", "-c", GRANT)
    _timed(shop, "project + migrate", started)

    # 6. a worker, beat (exactly one), the web server.
    started = time.monotonic()
    try:
        shop.start("worker", shop.python, "-m", "celery", "-A", "shop", "worker", "-l", "info",
                   "-Q", shop_queue, "--concurrency", "2", "-n", f"{shop_queue}@%h")  # fmt: skip
        shop.start("beat", shop.python, "-m", "celery", "-A", "shop", "beat", "-l", "info")
        port = _free_port()
        shop.start("web", shop.python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}")
        api = Api(f"http://127.0.0.1:{port}/api/dagger/")
        wait_for(
            lambda: shop.assert_running() or api.healthy(),
            timeout=COMMAND_TIMEOUT,
            interval=0.2,
            message=lambda: f"the web server's health endpoint\n{shop.describe()}",
        )

        # The README's example through the facade, in a process of the project ...
        output = shop.manage("shell", "-c", START_ORDER)
        found = re.search(r"^workflow (\S+)$", output, re.M)
        assert found, output
        by_facade = _completed(shop, api, found.group(1))

        # ... and through the API.
        status, created = api.call(
            "POST",
            "workflows/",
            {
                "template": "OrderWorkflow",
                "partition_key_lookup": "order_id",
                "runtime_parameters": {"order_id": "o-2"},
            },
        )
        assert status == 201, created
        by_api = _completed(shop, api, created["id"])
        _timed(shop, "processes + two workflows", started)

        for workflow, order in ((by_facade, "o-1"), (by_api, "o-2")):
            assert workflow["business_key"] == order
            assert workflow["runtime_parameters"]["payment_ref"].startswith(f"payment-{order}-")
            assert {task["status"] for task in workflow["tasks"]} == {"COMPLETED"}, workflow["tasks"]
            executors = [t["name"].rsplit(".", 1)[-1] for t in workflow["tasks"] if t["kind"] == "executor"]
            assert executors == ["charge_executor_task", "ship_executor_task"]
        shop.assert_running()
        beat_log = (shop.logs / "beat.log").read_text(errors="replace")
        assert "beat: Starting" in beat_log, beat_log
        assert "django_celery_beat.schedulers.DatabaseScheduler" in beat_log, beat_log  # from the settings
        print(f"install stages (seconds): {shop.timings}")
    finally:
        shop.stop_all()
        shutil.rmtree(shop.venv, ignore_errors=True)  # the logs and the project stay for a look
