"""The load of a fault campaign: creates workflows through the engine's public calls, like a client.

Run by the campaigns as ``python -m tests.faults.driver`` on the campaign's database. Each
workflow gets its id from the driver, so a create that raised can be checked afterwards (was it
committed anyway?). One JSON line per workflow goes to ``--out``. The number of unfinished
workflows is held under ``--max-inflight`` so the queue stays shorter than a lease.

SIGTERM or SIGINT (what a campaign sends to stop the load) ends the run after the create in hand
and its line: a workflow the driver committed is always in ``--out``. Dying on the signal between
a commit and its line would leave a workflow no record knows of, and the campaign's accounting
would count it as never finished or miss it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import signal
import time
import uuid
from typing import Any


class Stop:
    """Set by SIGTERM or SIGINT; the loop stops between two workflows, never inside a create."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--templates", default="mixed", help="comma-separated names, or 'mixed'")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--max-inflight", type=int, default=100)
    parser.add_argument("--slow-every", type=int, default=10, help="one workflow in N has a slow step")
    parser.add_argument("--slow", type=float, default=0.5, help="seconds of the slow step")
    parser.add_argument("--timer-min", type=float, default=0.5)
    parser.add_argument("--timer-max", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=0.0, help="workflows per second at most (0: no limit)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--import", dest="imports", action="append", default=[], help="modules to import")
    args = parser.parse_args()
    stop = Stop()
    stop.install()

    import django

    django.setup()
    for module in args.imports:
        importlib.import_module(module)
    from dagger_django import Dagger
    from dagger_django.models import Workflow

    from . import workflows as fw

    names = fw.MIXED if args.templates == "mixed" else args.templates.split(",")
    templates = {name: Dagger.get_template(name) for name in names}
    rng = random.Random(8)
    started = time.monotonic()
    with open(args.out, "a", buffering=1) as out:
        for i in range(args.count):
            if stop.requested:
                break
            if i % 20 == 0:
                while not stop.requested:
                    try:
                        inflight = Workflow.objects.filter(status="EXECUTING").count()
                    except Exception:  # the database is restarting: wait for it
                        from django.db import connection

                        connection.close()
                        time.sleep(0.5)
                        continue
                    if inflight < args.max_inflight:
                        break
                    time.sleep(0.1)
                if stop.requested:
                    break
            if args.rate:
                wait = started + i / args.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if stop.requested:
                    break
            name = names[i % len(names)]
            wid = uuid.uuid4()
            params: dict[str, object] = {"order_id": str(wid), "work": 0.005}
            if args.slow_every and i % args.slow_every == 0:
                params["slow"] = args.slow
            if name == "FaultsTimer":
                params["run_at"] = time.time() + rng.uniform(args.timer_min, args.timer_max)
            record: dict[str, object] = {"id": str(wid), "template": name, "at": time.time(), "ok": True}
            if "run_at" in params:
                record["run_at"] = params["run_at"]
            try:
                templates[name].create_instance(id=wid, submit_task=True, **params)
            except Exception as exc:  # a client sees this; the campaign checks what was committed
                from django.db import connection

                connection.close()
                record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
