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


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module ``path`` (a file of the package at ``root``) imports, at any level."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = ".".join(("dagger_django", *path.relative_to(root).with_suffix("").parts[:-1]))
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


# -- one direction between the definitions and the engine --------------------------------------------
#: The engine imports the definitions (user task classes, templates, the registry); the definitions
#: never import the engine, at any level: the facade's engine calls go through
#: ``definitions/engine_door.py``, which the app connects to the engine when it is ready. The
#: settings sit under both and import neither.
ENGINE = "dagger_django.engine"
BELOW_BOTH = ("conf.py",)


def _names(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _dotted_paths_called(path: Path) -> set[str]:
    """Text arguments of calls (``import_module("...")``, ``import_string("...")``): an import
    by dotted path is an import too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for arg in node.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    }


def direction_offenders(root: Path) -> list[str]:
    """Imports against the direction in the package at ``root``: a definitions module reaching the
    engine, the settings reaching the definitions or the engine."""
    checked = [(p, (ENGINE,)) for p in sorted((root / "definitions").rglob("*.py"))]
    checked += [(root / name, ("dagger_django.definitions", ENGINE)) for name in BELOW_BOTH]
    offenders = []
    for path, forbidden in checked:
        where = path.relative_to(root)
        for name in sorted(imported_modules(path, root)):
            if _names(name, forbidden):
                offenders.append(f"{where} imports {name}")
        for name in sorted(_dotted_paths_called(path)):
            if _names(name, forbidden):
                offenders.append(f"{where} loads {name}")
    return offenders


def test_the_definitions_never_import_the_engine_nor_the_settings_the_definitions() -> None:
    assert direction_offenders(PACKAGE) == []


def test_the_direction_rule_catches_imports_at_any_level_and_by_dotted_path(tmp_path: Path) -> None:
    (tmp_path / "definitions").mkdir()
    (tmp_path / "definitions" / "facade.py").write_text(
        "from ..engine import services\n"
        "from . import engine_door\n\n"
        "def send():\n"
        "    from dagger_django.engine.outbox import outbox_send\n"
        "    import importlib\n"
        "    return importlib.import_module('dagger_django.engine.messages')\n"
    )
    (tmp_path / "conf.py").write_text("def overrides():\n    from .definitions import registry\n")
    assert direction_offenders(tmp_path) == [
        "definitions/facade.py imports dagger_django.engine",
        "definitions/facade.py imports dagger_django.engine.outbox",
        "definitions/facade.py imports dagger_django.engine.outbox.outbox_send",
        "definitions/facade.py imports dagger_django.engine.services",
        "definitions/facade.py loads dagger_django.engine.messages",
        "conf.py imports dagger_django.definitions",
        "conf.py imports dagger_django.definitions.registry",
    ]


def test_the_app_connects_the_engine_door_to_the_engine_services() -> None:
    from dagger_django.definitions import engine_door
    from dagger_django.engine import services

    connected = engine_door.connect(None)
    engine_door.connect(connected)
    assert connected is services


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


# -- one status vocabulary ---------------------------------------------------------------------------
#: Where the stored vocabularies live (``models/status.py``), and the one other place allowed to
#: spell some of them: the pure definitions, which task objects use and which cannot import the
#: models (``definitions/enums.py``: ``TaskStatusEnum``, ``NodeKind``, ``TERMINAL_STATUSES``; the
#: test below keeps them equal to the stored ones).
VOCABULARY = PACKAGE / "models" / "status.py"
PURE_VOCABULARY = PACKAGE / "definitions" / "enums.py"
CHOICES_BASES = frozenset({"TextChoices", "IntegerChoices", "Choices"})
ENUM_BASES = frozenset({"Enum", "StrEnum", "IntEnum", "Flag", "IntFlag"})
#: Vocabularies whose stored values are upper case: the original's names (``TaskStatusEnum``,
#: ``TaskType``), which the API and task objects show. Every other stored value is lower case.
#: TimerStatus is upper case too; making it lower case takes a data migration, a rebuild of the
#: partial index on PENDING timers and care with workers of the previous release (they would
#: write PENDING timers the new sweep never sees), so it is left for a release that can stop them.
UPPER_CASE_VOCABULARIES = frozenset({"Status", "NodeType", "TimerStatus"})


def _base_names(node: ast.ClassDef) -> set[str]:
    return {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}


def _vocabulary(path: Path = VOCABULARY) -> dict[str, dict[str, str]]:
    """``{class name: {member name: stored value}}`` of the choices declared in ``path``."""
    found: dict[str, dict[str, str]] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and _base_names(node) & CHOICES_BASES:
            members = {}
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.value, ast.Tuple):
                    first = item.value.elts[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        members[item.targets[0].id] = first.value  # type: ignore[attr-defined]
            found[node.name] = members
    return found


def vocabulary_offenders(root: Path) -> list[str]:
    """Redefinitions of the status vocabulary in the package at ``root``: a choices class or an
    enum outside ``models/status.py`` (enums: and ``definitions/enums.py``), a module-level name
    ``TERMINAL``/``ACTIVE``/..., or a module-level collection of vocabulary members or values."""
    vocabulary = _vocabulary(root / "models" / "status.py")
    classes = set(vocabulary)
    values_of = {name: set(members.values()) for name, members in vocabulary.items()}
    reserved = {"TERMINAL", "TERMINAL_STATUSES", "ACTIVE", "ENDED_FOR_GOOD", "OPEN_DELIVERY"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if "migrations" in path.parts or path == root / "models" / "status.py":
            continue
        where = path.relative_to(root)
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = set(classes)
        for node in tree.body:  # S = Status, D = DeliveryStatus, ...
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in classes:
                aliases.update(t.id for t in node.targets if isinstance(t, ast.Name))
        pure = path == root / "definitions" / "enums.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = _base_names(node)
                if bases & CHOICES_BASES or (bases & ENUM_BASES and not pure):
                    offenders.append(f"{where}:{node.lineno} declares the vocabulary {node.name}")
        for node in tree.body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if any(n in reserved for n in names) and not pure:
                offenders.append(f"{where}:{node.lineno} redefines {names[0]}")
                continue
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") in {"frozenset", "set", "tuple"}:
                value = value.args[0] if value.args else value
            if not isinstance(value, (ast.Set, ast.Tuple, ast.List)) or len(value.elts) < 2:
                continue
            elts = value.elts
            if all(isinstance(e, ast.Attribute) and getattr(e.value, "id", "") in aliases for e in elts):
                offenders.append(f"{where}:{node.lineno} lists vocabulary members in {names[0]}")
            elif all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elts) and any(
                {e.value for e in elts} <= values
                for values in values_of.values()  # type: ignore[union-attr]
            ):
                if not pure:
                    offenders.append(f"{where}:{node.lineno} lists stored values in {names[0]}")
    return offenders


def test_one_status_vocabulary_in_models_status() -> None:
    assert vocabulary_offenders(PACKAGE) == []


def test_the_vocabulary_rule_catches_a_redefinition(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "status.py").write_text(VOCABULARY.read_text())
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "views.py").write_text(
        "from enum import StrEnum\n"
        "from django.db import models\n"
        "from ..models import Status\n"
        "S = Status\n"
        "class NodeKind(StrEnum):\n    PROCESS = 'process'\n"
        "class Mine(models.TextChoices):\n    A = 'a', 'A'\n"
        "TERMINAL = frozenset()\n"
        "DONE = frozenset({S.COMPLETED, S.STOPPED})\n"
        "REPLAYABLE = ('invalid', 'unmatched')\n"
        "CHECKPOINTS = ('task', 'process')\n"
        "def f(node):\n    return node.status in (S.SUBMITTED, S.EXECUTING)\n"
    )
    assert vocabulary_offenders(tmp_path) == [
        "api/views.py:5 declares the vocabulary NodeKind",
        "api/views.py:7 declares the vocabulary Mine",
        "api/views.py:9 redefines TERMINAL",
        "api/views.py:10 lists vocabulary members in DONE",
        "api/views.py:11 lists stored values in REPLAYABLE",
    ]


def test_the_pure_vocabulary_is_the_stored_one() -> None:
    """``definitions/enums.py`` spells for task objects what ``models/status.py`` stores."""
    from dagger_django.definitions import enums
    from dagger_django.models import status

    assert {m.name: m.value for m in enums.TaskStatusEnum} == {m.name: m.value for m in status.Status}
    assert {m.name: m.value for m in enums.NodeKind} == {m.name: m.value for m in status.NodeKind}
    assert {m.value for m in status.NodeType} <= {m.value for m in enums.TaskType}
    assert enums.TERMINAL_STATUSES == {str(s) for s in status.TERMINAL}


def test_stored_values_have_one_casing() -> None:
    """Lower case, but for the original's names (and TimerStatus, see UPPER_CASE_VOCABULARIES);
    never mixed within one vocabulary."""
    vocabulary = _vocabulary()
    assert UPPER_CASE_VOCABULARIES <= set(vocabulary)
    for name, members in vocabulary.items():
        values = [v for v in members.values() if v]  # StopHook.NONE is ""
        expected = [v.upper() if name in UPPER_CASE_VOCABULARIES else v.lower() for v in values]
        assert values == expected, name


def test_the_pages_status_vocabulary_is_models_status() -> None:
    assert set(_vocabulary()) == STATUS_VOCABULARY


# -- private names stay in their module ---------------------------------------------------------------
#: A ``_name`` is its module's own business: no other module of the package imports it or reaches
#: it through the module (``services._commit``). What other modules need is public, in the room
#: that owns it (a workflow's transaction: ``engine/txn.py``). Exceptions, each with its reason:
#: ``(importing module, reached module, name)``.
PRIVATE_ALLOWED: frozenset[tuple[str, str, str]] = frozenset()


def _module_of(dotted: str, root: Path) -> bool:
    """Whether ``dotted`` (``dagger_django.x.y``) is a module or package of the package at ``root``."""
    parts = dotted.split(".")[1:]
    if not parts:
        return True
    path = root.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_offenders(root: Path) -> list[str]:
    """Imports of another module's ``_name`` (``from .services import _commit``) and uses of one
    through a module (``services._commit``, ``dagger_django.engine.services._commit``)."""
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        parts = rel.with_suffix("").parts
        own = ".".join(("dagger_django", *(parts[:-1] if parts[-1] == "__init__" else parts)))
        package = ".".join(("dagger_django", *parts[:-1]))
        tree = ast.parse(path.read_text(), filename=str(path))
        modules: dict[str, str] = {}  # local name -> module of the package it is bound to
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(node, package)
                if not _names(source, ("dagger_django",)):
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    if _module_of(full, root):
                        modules[alias.asname or alias.name] = full
                    if _private(alias.name) and source != own:
                        found.add(f"{rel} imports {alias.name} from {source}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if _names(alias.name, ("dagger_django",)):
                        if alias.asname:
                            modules[alias.asname] = alias.name
                        else:
                            modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain: list[str] = []
            base: ast.AST = node
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if not isinstance(base, ast.Name) or base.id not in modules:
                continue
            module = modules[base.id]
            for attr in chain:
                if _private(attr) and module != own:
                    found.add(f"{rel} uses {module}.{attr}")
                    break
                if not _module_of(f"{module}.{attr}", root):
                    break
                module = f"{module}.{attr}"
        offenders += sorted(found)
    return offenders


def test_no_module_reaches_the_private_names_of_another() -> None:
    allowed = {f"{where} imports {name} from {source}" for where, source, name in PRIVATE_ALLOWED}
    allowed |= {f"{where} uses {source}.{name}" for where, source, name in PRIVATE_ALLOWED}
    assert [o for o in private_offenders(PACKAGE) if o not in allowed] == []


def test_the_private_rule_catches_imports_and_uses_through_a_module(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text("")
    (tmp_path / "engine" / "services.py").write_text("def _commit(): ...\n\ndef run():\n    _commit()\n")
    (tmp_path / "engine" / "messages.py").write_text(
        "from . import services\n"
        "from .services import _commit\n\n"
        "def apply(state):\n"
        "    services._commit(state)\n"
        "    state._settle()\n"  # an object's own method, not a module's name
        "    return services.run, services.__name__\n"
    )
    (tmp_path / "tasks.py").write_text(
        "import dagger_django.engine.services\n"
        "from .engine import services as s\n\n"
        "def run():\n"
        "    s._commit()\n"
        "    return dagger_django.engine.services._commit\n"
    )
    assert private_offenders(tmp_path) == [
        "engine/messages.py imports _commit from dagger_django.engine.services",
        "engine/messages.py uses dagger_django.engine.services._commit",
        "tasks.py uses dagger_django.engine.services._commit",
    ]


# -- how nodes are stored is engine/state.py's business -----------------------------------------------
#: Names that only the store (engine/state.py) and the models use: the page table and the
#: encoding of a node (docs/internals.md, "Node state in the workflow row").
NODE_STORAGE = frozenset({"NodePage", "NODE_FIELDS", "node_encode", "node_decode", "nodes_decode"})
NODE_STORE = {Path("engine/state.py"), Path("models/__init__.py"), Path("models/workflows.py")}


def _node_storage_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        name = (
            node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        )
        if name in NODE_STORAGE:
            found.append(f"{path.name}:{node.lineno} uses {name}")
        if isinstance(node, ast.ImportFrom):
            found.extend(
                f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in NODE_STORAGE
            )
    return found


def test_only_the_store_knows_how_nodes_are_stored() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE)
        if where in NODE_STORE or where.parts[0] == "migrations":
            continue
        offenders.extend(f"{where}: {use}" for use in _node_storage_uses(path))
    assert offenders == []


def test_the_node_storage_rule_catches_a_page_read(tmp_path: Path) -> None:
    path = tmp_path / "reader.py"
    path.write_text("from .models import NodePage\n\ndef f():\n    return NodePage.objects.all()\n")
    assert _node_storage_uses(path) == ["reader.py:1 imports NodePage", "reader.py:4 uses NodePage"]
