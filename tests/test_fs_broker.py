"""The embedded mode's broker: kombu's filesystem transport with atomic message writes."""

from __future__ import annotations

from pathlib import Path

from kombu import Connection


def test_messages_appear_whole_and_are_all_delivered(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(tmp_path)}
    with Connection(
        "filesystem://", transport="config.fs_broker:Transport", transport_options=options
    ) as conn:
        queue = conn.SimpleQueue("dagger-fs-test")
        for i in range(20):
            queue.put({"n": i})
        assert not list(folder.glob("*.part"))  # nothing half-written is left behind
        assert all(p.stat().st_size > 0 for p in folder.iterdir())
        received = []
        for _ in range(20):
            message = queue.get(timeout=5)
            received.append(message.payload["n"])
            message.ack()
        queue.close()
    assert sorted(received) == list(range(20))  # the transport orders by millisecond, not strictly
