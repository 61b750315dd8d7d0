#!/usr/bin/env python3
"""Run the whole demo stack on one machine with no servers: ``make run``.

On the project's default settings (an SQLite file and kombu's filesystem broker under ./var, or
under $DAGGER_VAR_DIR) this migrates the database, creates a local admin/admin superuser, starts a
real Celery worker, celery beat and Django's development server as child processes, and starts the
demo workflows with ``manage.py dagger_demo``. DATABASE_URL and CELERY_BROKER_URL are honoured when
the user exported them; nothing here sets them. With DATABASE_URL set the database may be shared or
reachable, so the admin/admin user is never created there (create one with ``manage.py
createsuperuser``) and ``--check`` asks the API without credentials (expecting a refusal).

Ctrl-C or SIGTERM stops every child (SIGTERM, a grace period, then SIGKILL). If one child exits on
its own, the others are stopped too and the launcher exits non-zero.

``--check`` does all of the above, waits until the demo workflows are COMPLETED, asks the API for
the workflow list, stops everything and exits 0 (or 1 on any failure or timeout). The test suite
and CI use it.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")
HOST = "127.0.0.1"
ADMIN_USER = ADMIN_PASSWORD = "admin"
DEMO_COMMAND = "dagger_demo"

#: Seconds a child gets to exit after SIGTERM before it is killed.
STOP_GRACE = 20.0
#: Celery's worker logs "<nodename> ready." once it consumes.
WORKER_READY = re.compile(r"@\S+ ready\.")

_print_lock = threading.Lock()


def say(message: str) -> None:
    emit("launcher", message)


def emit(source: str, line: str) -> None:
    with _print_lock:
        sys.stdout.write(f"{source:>8} | {line.rstrip()}\n")
        sys.stdout.flush()


class Shutdown(Exception):
    """Ctrl-C or SIGTERM reached the launcher."""


class ChildExited(Exception):
    """A long-running child stopped on its own."""


class Child:
    """A subprocess in its own process group whose output is echoed with a prefix.

    Its own process group keeps the terminal's Ctrl-C away from it: the launcher alone decides the
    order and the grace period of the shutdown.
    """

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], *, watch: re.Pattern[str] | None = None
    ):
        self.name = name
        self.argv = list(argv)
        self.matched = threading.Event()
        self.lines: list[str] = []
        self._watch = watch
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            process_group=0,
        )
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            self.lines.append(line)
            emit(self.name, line)
            if self._watch is not None and self._watch.search(line):
                self.matched.set()

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def send(self, signum: int) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def finish_output(self) -> None:
        self._reader.join(timeout=2)


class Launcher:
    def __init__(self, *, port: int, check: bool, timeout: float):
        self.port = port
        self.check = check
        self.timeout = timeout
        self.base_url = f"http://{HOST}:{port}"
        self.env = dict(os.environ)
        self.env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.services: list[Child] = []  # long-running: a death stops everything
        self.steps: list[Child] = []  # one-off commands, stopped too if still running
        self.stopping = False
        self.hurry = False
        self.demo_user = False

    # --- the sequence ---------------------------------------------------------------------------

    def run(self) -> int:
        self.describe_settings()
        if not self.step("migrate", [MANAGE, "migrate", "--noinput"], timeout=600):
            say("migrate failed; nothing was started")
            return 1
        self.demo_user = self.ensure_superuser()
        has_demo = DEMO_COMMAND in _django_commands()
        baseline = _workflow_ids() if has_demo and self.check else set()

        python = sys.executable
        celery = [python, "-m", "celery", "-A", "config"]
        # SQLite serialises writers: one worker thread is all it can use.
        self.start(
            "worker",
            [*celery, "worker", "-l", "info", "--pool=threads", "--concurrency=1"],
            watch=WORKER_READY,
        )
        # The scheduler is django_celery_beat's DatabaseScheduler, named in the settings.
        self.start("beat", [*celery, "beat", "-l", "info"])
        self.start("web", [python, MANAGE, "runserver", f"{HOST}:{self.port}", "--noreload"])

        status = self.wait_for_web(timeout=90)
        if status != 200:
            say(f"the admin login page answered HTTP {status}; expect errors in the web UI")
            if self.check:
                return 1
        if not self.wait(lambda: self.services[0].matched.is_set(), timeout=90):
            say("the worker has not reported ready after 90s; continuing, tasks will wait in the broker")

        if has_demo:
            if not self.step("demo", [MANAGE, DEMO_COMMAND], timeout=120):
                say(f"manage.py {DEMO_COMMAND} failed")
                if self.check:
                    return 1
        else:
            say(f"manage.py {DEMO_COMMAND} does not exist yet: no demo workflow was started")
            if self.check:
                say("CHECK FAILED: nothing to check without the demo command")
                return 1

        self.banner()
        if self.check:
            return self.check_demo(baseline)
        while True:  # until Ctrl-C, SIGTERM or a child's death
            self.wait(lambda: False, timeout=3600)

    def describe_settings(self) -> None:
        database = os.environ.get("DATABASE_URL") or f"SQLite file {_var_dir() / 'dagger.sqlite3'}"
        broker = os.environ.get("CELERY_BROKER_URL") or f"kombu filesystem broker in {_var_dir() / 'broker'}"
        say(f"database: {_hide_password(database)}")
        say(f"broker:   {_hide_password(broker)}")

    def ensure_superuser(self) -> bool:
        """Create admin/admin in the embedded database; True when that user can log in."""
        if not demo_user_allowed(os.environ):
            say(
                f"DATABASE_URL is set: not creating the demo user {ADMIN_USER}/{ADMIN_PASSWORD} outside "
                "the embedded database; create your own with `manage.py createsuperuser`"
            )
            return False
        _django_setup()
        from django.contrib.auth import get_user_model

        users = get_user_model()
        manager: Any = users._default_manager  # the user model's manager has create_superuser
        if manager.filter(**{str(users.USERNAME_FIELD): ADMIN_USER}).exists():
            say(f"superuser '{ADMIN_USER}' already exists")
        else:
            manager.create_superuser(ADMIN_USER, "admin@localhost", ADMIN_PASSWORD)
            say(
                f"created superuser {ADMIN_USER}/{ADMIN_PASSWORD}: FOR LOCAL USE ONLY, never on a reachable host"
            )
        return True

    def banner(self) -> None:
        for line in (
            "-" * 72,
            "dagger_django is running (embedded: no servers needed)",
            f"  admin: {self.base_url}/admin/   "
            + (
                f"(login {ADMIN_USER}/{ADMIN_PASSWORD}, local use only)"
                if self.demo_user
                else "(your own login)"
            ),
            f"  API:   {self.base_url}/api/dagger/workflows/",
            "  stop:  Ctrl-C" if not self.check else "  --check: waiting for the demo workflows to complete",
            "-" * 72,
        ):
            say(line)

    def check_demo(self, baseline: set[Any]) -> int:
        outcome: dict[str, Any] = {}

        def settled() -> bool:
            outcome.update(_demo_outcome(baseline))
            return outcome["state"] != "running"

        finished = self.wait(settled, timeout=self.timeout, interval=0.5)
        for wid, status in sorted(outcome.get("workflows", {}).items()):
            say(f"workflow {wid}: {status}")
        if not finished:
            say(f"CHECK FAILED: the demo workflows did not finish within {self.timeout:.0f}s")
            _print_nodes(outcome.get("workflows", {}))
            return 1
        if outcome["state"] != "completed":
            say("CHECK FAILED: a demo workflow ended without completing")
            _print_nodes(outcome.get("workflows", {}))
            return 1
        # Without the demo user the API must refuse: that it answers so is the check.
        auth = (ADMIN_USER, ADMIN_PASSWORD) if self.demo_user else None
        expected = {200} if self.demo_user else {401, 403}
        api = _http_status(f"{self.base_url}/api/dagger/workflows/", auth=auth)
        if api not in expected:
            say(f"CHECK FAILED: GET /api/dagger/workflows/ answered {api}")
            return 1
        say("CHECK PASSED: the demo workflows completed and the admin and API answer")
        return 0

    # --- children -------------------------------------------------------------------------------

    def start(self, name: str, argv: Sequence[str], *, watch: re.Pattern[str] | None = None) -> Child:
        child = Child(name, argv, self.env, watch=watch)
        self.services.append(child)
        say(f"started {name} (pid {child.proc.pid}): {' '.join(argv[1:])}")
        return child

    def step(self, name: str, args: Sequence[str], *, timeout: float) -> bool:
        """Run a one-off command to its end while the services keep being watched."""
        child = Child(name, [sys.executable, *args], self.env)
        self.steps.append(child)
        if not self.wait(lambda: child.returncode is not None, timeout=timeout):
            say(f"{name} did not finish within {timeout:.0f}s")
            self.stop([child])
            return False
        child.finish_output()
        return child.returncode == 0

    def wait(self, predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2) -> bool:
        """Poll ``predicate`` until it holds or ``timeout`` passes; a dead service aborts the wait."""
        deadline = time.monotonic() + timeout
        while True:
            for child in self.services:
                if child.returncode is not None:
                    raise ChildExited(f"{child.name} exited with code {child.returncode}")
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def wait_for_web(self, *, timeout: float) -> int | None:
        status: int | None = None

        def answers() -> bool:
            nonlocal status
            status = _http_status(f"{self.base_url}/admin/login/")
            return status is not None

        if not self.wait(answers, timeout=timeout, interval=0.3):
            raise ChildExited(f"the web server did not answer on {self.base_url} within {timeout:.0f}s")
        return status

    def stop(self, children: Sequence[Child] | None = None) -> None:
        """SIGTERM everything still running (web first, worker last), then SIGKILL the stragglers."""
        targets = list(children) if children is not None else [*self.steps, *self.services]
        alive = [c for c in reversed(targets) if c.returncode is None]
        for child in alive:
            say(f"stopping {child.name} (pid {child.proc.pid})")
            child.send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(c.returncode is None for c in alive) and time.monotonic() < deadline and not self.hurry:
            time.sleep(0.1)
        for child in alive:
            if child.returncode is None:
                say(f"{child.name} did not stop in time: killing it")
                child.kill_group()
                child.proc.wait(timeout=10)
            child.finish_output()
            say(f"{child.name} exited with code {child.returncode}")

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self.hurry = True  # a second Ctrl-C: skip the grace period
            return
        raise Shutdown(signal.Signals(signum).name)


# --- Django, used in-process for the superuser, the demo's baseline and --check -----------------


def demo_user_allowed(environ: Mapping[str, str]) -> bool:
    """Whether admin/admin may be created: only in the embedded database (no DATABASE_URL), the
    same test as the settings' embedded mode."""
    return not environ.get("DATABASE_URL")


def _var_dir() -> Path:
    return Path(os.environ.get("DAGGER_VAR_DIR") or ROOT / "var")


def _django_setup() -> None:
    import django
    from django.apps import apps

    if apps.ready:
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()


def _django_commands() -> set[str]:
    _django_setup()
    from django.core.management import get_commands

    return set(get_commands())


def _workflow_ids() -> set[Any]:
    _django_setup()
    from dagger_django.models import Workflow

    return set(Workflow.objects.values_list("pk", flat=True))


def _demo_outcome(baseline: set[Any]) -> dict[str, Any]:
    """The workflows created since ``baseline`` and whether they are all COMPLETED yet."""
    _django_setup()
    from dagger_django.models import Workflow

    rows = {
        str(pk): status for pk, status in Workflow.objects.values_list("pk", "status") if pk not in baseline
    }
    statuses = set(rows.values())
    if not rows:
        state = "running"  # the demo's commit is not visible yet
    elif statuses == {"COMPLETED"}:
        state = "completed"
    elif statuses & {"FAILURE", "STOPPED", "SKIPPED"}:
        state = "failed"
    else:
        state = "running"
    return {"state": state, "workflows": rows}


def _print_nodes(workflows: dict[str, str]) -> None:
    """Best effort: show where each unfinished workflow stands."""
    try:
        from dagger_django.engine.selectors import workflow_nodes

        for wid, status in workflows.items():
            if status == "COMPLETED":
                continue
            for node in workflow_nodes(workflow_id=wid):
                say(f"  {wid} {node.name}: {node.status}")
    except Exception as exc:  # diagnostics only; never hide the real failure behind this one
        say(f"(could not list the nodes: {exc})")


# --- small helpers ------------------------------------------------------------------------------


def _http_status(url: str, *, auth: tuple[str, str] | None = None) -> int | None:
    """The HTTP status of GET ``url``, or None when nothing answers."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8000, help="port of the web server (default 8000)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="wait for the demo workflows to complete, then stop everything; exit 0 on success",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="with --check: seconds the demo workflows get to complete (default 120)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    _var_dir().mkdir(parents=True, exist_ok=True)
    if not _port_is_free(args.port):
        say(f"port {args.port} on {HOST} is in use: stop what runs there or pass --port")
        return 1

    launcher = Launcher(port=args.port, check=args.check, timeout=args.timeout)
    signal.signal(signal.SIGINT, launcher.on_signal)
    signal.signal(signal.SIGTERM, launcher.on_signal)
    code = 1
    try:
        code = launcher.run()
    except Shutdown as exc:
        say(f"{exc} received: stopping")
        code = 1 if args.check else 0
    except ChildExited as exc:
        say(f"{exc}: stopping the others")
        code = 1
    finally:
        launcher.stopping = True
        launcher.stop()
    say(f"exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
