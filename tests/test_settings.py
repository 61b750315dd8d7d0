"""The demo project's safe defaults (docs/deployment.md): the embedded mode keeps its
conveniences, anything else is production-safe unless asked otherwise.

Settings are read once per process, so each case runs ``manage.py`` in a fresh one.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Variables of the demo's settings that a case must not inherit from the test run.
SETTINGS_VARIABLES = re.compile(r"^(DJANGO_|DATABASE_URL$|CELERY_BROKER_URL$|KAFKA_)")
POSTGRES = "postgres://postgres@127.0.0.1:5432/unused"
SHOW = (
    "from django.conf import settings as s; "
    "print(s.DEBUG, len(s.AUTH_PASSWORD_VALIDATORS), len(s.REST_FRAMEWORK['DEFAULT_THROTTLE_CLASSES']))"
)


def manage(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not SETTINGS_VARIABLES.match(k)}
    clean.update(DAGGER_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="config.settings", **env)
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def documented_production_settings() -> dict[str, str]:
    """The ```env block of docs/deployment.md, with a real random key for the placeholder."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"```env\n(.*?)```", text, re.S)
    assert block, "docs/deployment.md has no ```env block of production settings"
    values = dict(line.split("=", 1) for line in block.group(1).splitlines() if "=" in line)
    assert values["DJANGO_SECRET_KEY"].startswith("<")
    import secrets

    values["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    return values


def test_outside_the_embedded_mode_the_settings_refuse_to_load_without_a_secret_key(tmp_path: Path) -> None:
    result = manage("check", tmp_path=tmp_path, DATABASE_URL=POSTGRES)

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


def test_outside_the_embedded_mode_debug_is_off_and_validators_and_throttles_are_on(tmp_path: Path) -> None:
    result = manage("shell", "-c", SHOW, tmp_path=tmp_path, DATABASE_URL=POSTGRES, DJANGO_SECRET_KEY="k" * 50)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["False", "4", "2"]


def test_debug_is_on_outside_the_embedded_mode_only_when_asked(tmp_path: Path) -> None:
    result = manage(
        "shell",
        "-c",
        SHOW,
        tmp_path=tmp_path,
        DATABASE_URL=POSTGRES,
        DJANGO_SECRET_KEY="k" * 50,
        DJANGO_DEBUG="1",
    )

    assert result.stdout.splitlines()[-1].split()[0] == "True", result.stderr


def test_the_embedded_mode_needs_no_secret_key_and_keeps_debug(tmp_path: Path) -> None:
    result = manage("shell", "-c", SHOW, tmp_path=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["True", "4", "2"]


def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path: Path) -> None:
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", tmp_path=tmp_path, **documented_production_settings()
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_names_each_https_switch_left_off(tmp_path: Path) -> None:
    production = documented_production_settings()
    bare = {k: v for k, v in production.items() if not k.startswith("DJANGO_SECURE_")}

    result = manage("check", "--deploy", "--fail-level", "WARNING", tmp_path=tmp_path, **bare)

    assert result.returncode != 0
    found = set(re.findall(r"security\.W\d+", result.stdout + result.stderr))
    assert found == {"security.W004", "security.W008", "security.W012", "security.W016"}


# -- `make run` creates admin/admin only in the embedded database ---------------------------------
def launcher_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_embedded", ROOT / "scripts" / "run_embedded.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.django_db
def test_make_run_refuses_to_create_the_demo_user_when_database_url_is_set(
    monkeypatch: pytest.MonkeyPatch, django_user_model: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_embedded = launcher_module()
    monkeypatch.setenv("DATABASE_URL", POSTGRES)

    created = run_embedded.Launcher(port=0, check=False, timeout=1).ensure_superuser()

    assert created is False
    assert not django_user_model.objects.filter(username="admin").exists()
    assert "not creating the demo user" in capsys.readouterr().out


@pytest.mark.django_db
def test_make_run_creates_the_demo_user_in_the_embedded_database(
    monkeypatch: pytest.MonkeyPatch, django_user_model: Any
) -> None:
    run_embedded = launcher_module()
    # The suite's own database stands in for the embedded one: what counts is DATABASE_URL unset.
    monkeypatch.delenv("DATABASE_URL", raising=False)

    assert run_embedded.Launcher(port=0, check=False, timeout=1).ensure_superuser() is True
    assert django_user_model.objects.get(username="admin").is_superuser
