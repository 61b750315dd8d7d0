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


# -- pages read through engine/selectors ------------------------------------------------------------
#: What shows workflows to people: they read through ``engine.selectors``, never the tables, so
#: that a change of storage (nodes, history) changes the selectors alone.
PAGES = ("api", "admin.py", "graph_view.py")
#: Names of ``dagger_django.models`` a page may import: the status vocabulary, no table.
STATUS_VOCABULARY = frozenset(
    {
        "Status",
        "NodeKind",
        "NodeType",
        "StopHook",
        "TimerPurpose",
        "TimerStatus",
        "InboxStatus",
        "DeliveryStatus",
        "OutboxKind",
        "OutboxStatus",
    }
)
#: Tables the admin registers (a ModelAdmin needs its model) and may therefore name; the others,
#: whose layout is about to change (nodes, history), it reads only through the selectors.
ADMIN_REGISTERS = frozenset(
    {"Workflow", "WorkflowTemplate", "Timer", "InboxMessage", "OutboxMessage", "Delivery"}
)
MANAGERS = frozenset({"objects", "_default_manager", "_base_manager"})


def _page_files() -> list[Path]:
    files: list[Path] = []
    for page in PAGES:
        path = PACKAGE / page
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (annotations only)."""
    found: list[ast.AST] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _model_imports(path: Path, tree: ast.AST) -> set[str]:
    names: set[str] = set()
    package = "dagger_django." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts[:-1])
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rstrip(".").split(".")[: len(package.rstrip(".").split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "dagger_django.models" or module.startswith("dagger_django.models."):
                names.update(alias.name for alias in node.names)
            elif module == "dagger_django" and any(alias.name == "models" for alias in node.names):
                names.add("*")
        elif isinstance(node, ast.Import):
            if any(
                a.name == "dagger_django.models" or a.name.startswith("dagger_django.models.")
                for a in node.names
            ):
                names.add("*")
    return names


def test_pages_read_through_the_selectors_not_the_tables() -> None:
    offenders = []
    for path in _page_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(PACKAGE)
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Attribute) and node.attr in MANAGERS:
                offenders.append(f"{where}:{node.lineno} queries a table (.{node.attr})")
        allowed = STATUS_VOCABULARY | (ADMIN_REGISTERS if path.name == "admin.py" else frozenset())
        for name in sorted(_model_imports(path, tree) - allowed):
            offenders.append(f"{where} imports {name} from dagger_django.models")
    assert offenders == []


def test_the_page_rule_catches_a_query_and_a_model_import(tmp_path: Path) -> None:
    source = "from .models import Node, Status\n\ndef f():\n    return Node.objects.filter(status=Status.COMPLETED)\n"
    path = PACKAGE / "graph_view.py"
    tree = ast.parse(source)
    assert _model_imports(path, tree) == {"Node", "Status"}
    assert [n.attr for n in _runtime_nodes(tree) if isinstance(n, ast.Attribute) and n.attr in MANAGERS] == [
        "objects"
    ]
