"""Traces in the test processes: the pytest process keeps its spans in memory; a worker or
bridge started by the suite writes its spans to the file named by ``DAGGER_TEST_TRACE_FILE``
(one JSON object a line), which the tests read. Imported by the worker (tests/worker_tasks.py)
and the bridge (tests/kafka/workflows.py); without the variable, or without the OpenTelemetry
SDK, it does nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TRACE_FILE_VARIABLE = "DAGGER_TEST_TRACE_FILE"
_exporting = False


def export_to_file() -> bool:
    """Install an SDK tracer provider that appends each finished span to the trace file (its
    spans are exported as they end, so a forked pool process writes its own lines). Once per
    process, whichever module asks first."""
    global _exporting
    path = os.environ.get(TRACE_FILE_VARIABLE)
    if not path or _exporting:
        return _exporting
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        return False
    out = open(path, "a", buffering=1)  # noqa: SIM115 - held for the process's life
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n"))
    )
    trace.set_tracer_provider(provider)
    _exporting = True
    return True


def read_spans(path: Path | None) -> list[dict[str, Any]]:
    """The spans written to ``path`` so far (a line being written is left out)."""
    if path is None or not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        try:
            spans.append(json.loads(line))
        except ValueError:
            continue
    return spans


def hex_id(value: int, width: int) -> str:
    """An id as the SDK's JSON writes it (``0x`` and ``width`` hex digits)."""
    return "0x" + format(value, f"0{width}x")
