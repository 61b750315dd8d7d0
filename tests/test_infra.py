"""The project's own machinery: migrations, the CI entry point, the embedded launcher, the test worker."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER_TIMEOUT = 180


@pytest.mark.django_db
def test_makemigrations_check_creates_nothing() -> None:
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit:
        pytest.fail(f"models and migrations disagree; run `manage.py makemigrations`:\n{out.getvalue()}")


def test_ci_script_runs_make_test() -> None:
    script = ROOT / ".ci" / "run"
    commands = [
        line.strip()
        for line in script.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "set -euo pipefail" in commands
    assert commands[-1] == "make test"
    assert os.access(script, os.X_OK), ".ci/run must be executable"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_celery_worker_fixture_runs_tasks_on_the_test_database(celery_worker_process) -> None:
    from django.contrib.auth.models import Group

    from tests.worker_tasks import record_group

    name = f"worker-check-{uuid.uuid4().hex[:8]}"
    record_group.delay(name)

    wait_for(
        lambda: Group.objects.filter(name=name).exists(),
        timeout=30,
        message=f"the worker on queue {celery_worker_process.queue} to write group {name}",
    )


@pytest.mark.e2e
def test_embedded_launcher_check(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_QUEUE"}
    }
    env["DAGGER_VAR_DIR"] = str(tmp_path / "var")
    port = _free_port()
    argv = [sys.executable, str(ROOT / "scripts" / "run_embedded.py"), "--check", "--port", str(port)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=LAUNCHER_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the launcher stop its own children before it goes.
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"the launcher's check took more than {LAUNCHER_TIMEOUT}s:\n{_tail(output)}")
    assert proc.returncode == 0, f"the launcher's check failed (exit {proc.returncode}):\n{_tail(output)}"

    # One line per demo workflow as it settles, with its admin page; the two that wait for an
    # operator come with the exact commands, which the check then carried out through the API.
    admin = rf"http://127\.0\.0\.1:{port}/admin/dagger_django/workflow/(?P<id>[0-9a-f-]{{36}})/change/"
    lines = [line.split(" | ", 1)[1] for line in output.splitlines() if line.startswith("launcher | ")]
    outcomes = [
        m for line in lines if (m := re.match(rf"(?P<key>order-\d+) (?P<state>[A-Z]+) {admin}", line))
    ]
    settled = [(m["key"], m["state"]) for m in outcomes]
    assert settled.count(("order-4711", "COMPLETED")) == 1, _tail(output)  # shipped after its timer
    assert settled.count(("order-4712", "COMPLETED")) == 1, _tail(output)  # refunded
    assert settled.index(("order-4713", "FAILURE")) < settled.index(("order-4713", "COMPLETED"))
    assert settled.index(("order-4714", "WAITING")) < settled.index(("order-4714", "COMPLETED"))
    assert len({m["id"] for m in outcomes}) == 4
    assert any("(refunded 17.5)" in line for line in lines if line.startswith("order-4712 COMPLETED"))
    event = "curl -u admin:admin -X POST -H 'Content-Type: application/json' -d "
    assert any(
        line.strip().startswith(event) and line.endswith(f":{port}/api/dagger/events/") for line in lines
    )
    assert any(
        re.search(r"--check: POST /api/dagger/workflows/[0-9a-f-]+/retry/ answered 200", line)
        for line in lines
    )
    assert "--check: POST /api/dagger/events/ answered 202" in lines
    assert lines[-1] == "exit 0" and any(line.startswith("CHECK PASSED") for line in lines)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(output: str, lines: int = 150) -> str:
    return "\n".join(output.splitlines()[-lines:])
