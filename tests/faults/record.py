"""The figures of a campaign, written as one JSON record per campaign for the reliability table.

``make faults`` runs every campaign at full size; each calls :func:`write` with its figures, and
``scripts/faults_table.py`` turns the records of ``var/faults/`` into the table of
docs/reliability.md. Short runs (``make test``) write their records too, marked ``short``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from .scale import full

ROOT = Path(__file__).resolve().parent.parent.parent
#: Where the records go (``DAGGER_FAULTS_DIR`` overrides it).
OUT_DIR = Path(os.environ.get("DAGGER_FAULTS_DIR", ROOT / "var" / "faults"))


def broken(figures: dict[str, Any], *zero: str) -> list[str]:
    """The promises a campaign broke: each of ``zero`` must be 0 (or false) in ``figures``."""
    return [f"{name.replace('_', ' ')}: {figures[name]}" for name in zero if figures.get(name)]


def write(
    name: str,
    title: str,
    figures: dict[str, Any],
    *,
    started: float,
    defects: list[str] | None = None,
    examples: list[Any] | None = None,
) -> Path:
    """Write ``var/faults/<name>.json``: what ran, how big, how long, the figures, the defects seen."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    record = {
        "name": name,
        "title": title,
        "size": "full" if full() else "short",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "figures": figures,
        "defects": defects or [],
        "examples": examples or [],
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    print(f"\n{title}: {json.dumps(figures)}")
    return path
