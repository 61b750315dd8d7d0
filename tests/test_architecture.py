"""Import boundaries: the engine and the definitions know nothing of their transports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dagger_django"
FORBIDDEN = (
    "celery",
    "kombu",
    "confluent_kafka",
    "rest_framework",
    "dagger_django.tasks",
    "dagger_django.api",
    "dagger_django.adapters",
    "dagger_django.kafka",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = "dagger_django." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", ["engine", "definitions"])
def test_layer_imports_no_transport(layer: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offenders == []


def test_definitions_do_not_import_models_at_module_level() -> None:
    offenders = []
    for path in sorted((PACKAGE / "definitions").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and "models" in node.module.split("."):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


def test_importing_the_package_does_not_touch_the_app_registry() -> None:
    import subprocess
    import sys

    code = "import dagger_django, sys; from dagger_django import Dagger, ExecutorTask; print('django.apps.registry' in sys.modules and __import__('django.apps').apps.ready)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("False",)
