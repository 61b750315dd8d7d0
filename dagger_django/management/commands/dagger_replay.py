"""``manage.py dagger_replay``: route recorded messages again (dead letters, unmatched, expired)."""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dagger_django.models.status import INBOX_REPLAYABLE


class Command(BaseCommand):
    help = (
        "Route recorded inbox messages again, as if they had just arrived: by id, or every message "
        "of a status (invalid, unmatched, expired), optionally of one topic. Use it once the "
        "listener template exists or the producer's bug is fixed; --dry-run lists what it would do. "
        "Who replayed (--actor, by default cli:<OS user>) and why (--reason) are kept on each message "
        "and in the history of each workflow it reaches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", type=int, help="inbox message ids")
        parser.add_argument(
            "--status", choices=[str(s) for s in INBOX_REPLAYABLE], help="replay every message of this status"
        )
        parser.add_argument("--topic", help="only messages of this topic (with --status)")
        parser.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
        parser.add_argument("--dry-run", action="store_true", help="list the messages, replay nothing")
        parser.add_argument(
            "--actor", default=None, help="who replays, as recorded (default: cli:<the OS user running this>)"
        )
        parser.add_argument("--reason", default="", help="why, as recorded (optional)")

    def handle(self, *args: Any, **options: Any) -> None:
        from dagger_django.engine.operations import message_replay
        from dagger_django.exceptions import MessageDoesNotExist
        from dagger_django.models import InboxMessage

        ids: list[int] = options["ids"]
        status, topic, limit = options["status"], options["topic"], options["limit"]
        if bool(ids) == bool(status):
            raise CommandError("give inbox message ids, or --status (not both)")
        if topic and not status:
            raise CommandError("--topic goes with --status")
        if limit <= 0:
            raise CommandError("--limit must be positive")
        if ids:
            found = set(InboxMessage.objects.filter(pk__in=ids).values_list("pk", flat=True))
            missing = [i for i in ids if i not in found]
            if missing:
                raise CommandError(f"no inbox message with id {', '.join(map(str, missing))}")
            chosen = list(dict.fromkeys(ids))
        else:
            rows = InboxMessage.objects.filter(status=status)
            if topic:
                rows = rows.filter(topic=topic)
            chosen = list(rows.order_by("id").values_list("pk", flat=True)[:limit])
        if options["dry_run"]:
            for pk in chosen:
                self.stdout.write(f"would replay {pk}")
            self.stdout.write(f"{len(chosen)} message(s)")
            return
        actor = cli_actor() if options["actor"] is None else options["actor"]
        counts: dict[str, int] = {}
        for pk in chosen:
            try:
                routed = message_replay(inbox_id=pk, actor=actor, reason=options["reason"])
            except MessageDoesNotExist:
                self.stdout.write(f"{pk}: gone (pruned meanwhile)")
                continue
            counts[routed.status] = counts.get(routed.status, 0) + 1
            self.stdout.write(f"{pk}: {routed.status}, {routed.matched} listener(s)")
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to replay"
        self.stdout.write(f"replayed {sum(counts.values())} message(s): {summary}")


def cli_actor() -> str:
    """``cli:<user>``: the OS user running the command (``cli`` alone when it has no name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry for the uid
        return "cli"
    return f"cli:{user}" if user else "cli"
