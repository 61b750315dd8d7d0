"""Where the CPU of a benchmark run goes, by process group (read from ``/proc``, Linux only).

A throughput figure says how fast; this says who paid for it. :class:`CpuMeter` reads the CPU
time (user + system) of every process on the machine when a run starts and when it ends, and sums
the difference by group: the benchmark's own process (its client threads and polling), the
worker's main process, its pool processes, PostgreSQL (every backend and background process),
Redis, and everything else. Divided by the number of workflows it gives milliseconds of CPU per
workflow for each group, which is what a ratio to the bare chain is made of on a 2-core machine.

Processes that start inside the window count from zero; one that ends inside it counts up to
its last reading (every quarter of a second). The ``other`` group is everything else on the
machine: a run on a busy machine shows it there.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _read(pid: int) -> tuple[str, int, float] | None:
    """``(name, parent pid, CPU seconds)`` of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name is in parentheses and may itself hold spaces or parentheses.
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    ppid, utime, stime = int(rest[1]), int(rest[11]), int(rest[12])
    return name, ppid, (utime + stime) / _TICKS


def _snapshot() -> dict[int, tuple[str, int, float]]:
    out: dict[int, tuple[str, int, float]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _read(int(entry.name))
            if found is not None:
                out[int(entry.name)] = found
    return out


@dataclass
class CpuMeter:
    """CPU seconds by group between :meth:`start` and :meth:`stop`.

    A thread reads every process every ``every`` seconds, so a process that starts inside the
    window (a PostgreSQL backend of a new connection) counts from zero, and one that ends inside
    it (a client thread's connection, closed) counts up to its last reading.
    """

    worker_pid: int | None = None
    #: When set, PostgreSQL backends serving another database count as ``other`` (the server
    #: may be shared with other work); background processes count as ``postgresql`` whatever.
    database: str | None = None
    #: Further processes of a group of their own (pid -> group name), e.g. a broker.
    others: dict[int, str] = field(default_factory=dict)
    every: float = 0.25
    _before: dict[int, tuple[str, int, float]] = field(default_factory=dict)
    _last: dict[int, tuple[str, int, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _databases: dict[int, str | None] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._before = _snapshot()
        self._last = dict(self._before)
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="cpu-meter", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self._last.update(_snapshot())

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._last.update(_snapshot())
        groups: dict[str, float] = {}
        me = os.getpid()
        for pid, (name, ppid, cpu) in self._last.items():
            before = self._before.get(pid)
            spent = cpu if before is None or before[0] != name else cpu - before[2]
            if spent <= 0:
                continue
            group = self._group(pid, name, ppid, me)
            groups[group] = groups.get(group, 0.0) + spent
        return {k: round(v, 3) for k, v in sorted(groups.items())}

    def _group(self, pid: int, name: str, ppid: int, me: int) -> str:
        if pid == me:
            return "benchmark client"
        if pid in self.others:
            return self.others[pid]
        if self.worker_pid is not None and pid == self.worker_pid:
            return "worker main"
        if self.worker_pid is not None and ppid == self.worker_pid:
            return "worker pool"
        if name.startswith("postgres") or name.startswith("postmaster"):
            if self.database is not None and not self._serves(pid, self.database):
                return "other"
            return "postgresql"
        if name.startswith("redis"):
            return "redis"
        return "other"

    def _serves(self, pid: int, database: str) -> bool:
        """Whether ``pid`` is a background process, or a backend of ``database``. A backend's
        database is read once (``_databases``), while it runs."""
        found = self._databases.get(pid, "")
        if found == "":
            found = self._databases[pid] = _backend_database(pid)
        return found is None or found == database


def _backend_database(pid: int) -> str | None:
    """The database a PostgreSQL backend serves, read from its title (``postgres: [cluster:]
    user database host(port) activity``); None for a background process or one that is gone."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    words = title.split()
    if "autovacuum" in words and "worker" in words and len(words) > words.index("worker") + 1:
        return words[words.index("worker") + 1]  # autovacuum worker <database>
    for i, word in enumerate(words[3:], start=3):
        if word == "[local]" or (word.endswith(")") and "(" in word):  # the client's address
            return words[i - 1]
    return None


def per_item_ms(groups: dict[str, float], items: int) -> dict[str, float]:
    """The groups' CPU seconds as milliseconds per workflow (or chain), with their total."""
    out = {k: round(1000 * v / items, 2) for k, v in groups.items()}
    out["total"] = round(sum(1000 * v / items for v in groups.values()), 2)
    return out
