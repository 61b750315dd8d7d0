"""kombu's filesystem transport with atomic writes, for the embedded (no servers) mode.

kombu 5's filesystem channel creates a message file and then writes it, while a consumer may
move and read the file in between: it then reads an empty file, and the worker stops with a
JSON error (and the message is lost). Here a message is written to a temporary name the
consumer ignores and renamed into place, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = final + ".part"  # "<queue>.msg.part" never matches a consumer's "<queue>.msg"
        try:
            with open(temporary, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
