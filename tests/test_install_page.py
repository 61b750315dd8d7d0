"""docs/install.md shows the files tests/e2e/test_install.py writes into a fresh project, word for
word, and the README's workflow example is the one that test runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "tests" / "install_project"
FILES = ["settings.py", "shop/celery.py", "shop/__init__.py", "shop/urls.py", "orders/workflows.py"]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


@pytest.mark.parametrize("name", FILES)
def test_the_install_page_shows_each_file_the_install_test_writes(name: str) -> None:
    assert (TEMPLATES / name).read_text() in python_blocks(ROOT / "docs" / "install.md")


def test_the_readme_example_is_the_workflow_module_the_install_test_runs() -> None:
    assert python_blocks(ROOT / "README.md")[0] == (TEMPLATES / "orders" / "workflows.py").read_text()
