"""Device messages the bridge took from the broker while the database was unavailable.

A batch is written as received (topic, payload bytes, whether its signature was checked) to
one JSON-lines file, fsynced before the broker gets its acknowledgement, and replayed oldest
first when the database answers again. While a backlog exists, newer batches join its end, so
every device's messages are stored in the order it sent them. Each server process has a
directory of its own (named after its MQTT client id), so no two processes replay one file.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from time import time_ns


@dataclass(frozen=True)
class SpooledMessage:
    topic: str
    payload: bytes
    # The signature was checked against the device's key when the message arrived.
    verified: bool


class UplinkSpool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._last_name = 0
        self._pending = len(self._files())

    def _files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("*.jsonl"))

    def has_backlog(self) -> bool:
        """Files not yet replayed, the one being replayed included."""
        return self._pending > 0

    @property
    def pending_files(self) -> int:
        return self._pending

    def write(self, messages: list[SpooledMessage]) -> None:
        """Append a batch durably (file and directory fsynced) before it is acknowledged."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = max(time_ns(), self._last_name + 1)
        self._last_name = stamp
        path = self.directory / f"{stamp:020d}.jsonl"
        tmp = path.with_suffix(".tmp")
        self._write_file(tmp, messages)
        os.replace(tmp, path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._pending += 1

    @staticmethod
    def _write_file(path: Path, messages: list[SpooledMessage]) -> None:
        with path.open("w", encoding="utf-8") as handle:
            for message in messages:
                record = {
                    "topic": message.topic,
                    "payload": base64.b64encode(message.payload).decode(),
                    "verified": message.verified,
                }
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def oldest(self) -> tuple[Path, list[SpooledMessage]] | None:
        files = self._files()
        if not files:
            self._pending = 0
            return None
        path = files[0]
        messages = []
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    messages.append(
                        SpooledMessage(
                            topic=record["topic"],
                            payload=base64.b64decode(record["payload"]),
                            verified=bool(record["verified"]),
                        )
                    )
        return path, messages

    def rewrite(self, path: Path, messages: list[SpooledMessage]) -> None:
        """Keep only ``messages`` of a partly replayed file (in place, atomically)."""
        tmp = path.with_suffix(".tmp")
        self._write_file(tmp, messages)
        os.replace(tmp, path)

    def done(self, path: Path) -> None:
        path.unlink()
        self._pending = max(0, self._pending - 1)
