"""The analytics recorder's disk spool: batches the database could not take, kept on disk.

One JSON-lines file per batch, fsync'd before it counts, replayed oldest first by the
recorder (:mod:`homepot.analytics.recorder`) as soon as the database answers again.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from time import time_ns

from homepot.analytics.row_shapes import _SHAPES, QueuedEvent, _decode_row, _encode


class Spool:
    """Batches that could not be written, one JSON-lines file each, replayed in order.

    Several server processes may share one spool directory. File names start with a
    nanosecond timestamp, so that they sort in the order they were written, and end with
    the writer's pid. A process claims a file for replay by renaming it (atomic), so no two
    processes replay the same batch; a claim left by a process that died is released at
    start-up.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._release_stale_claims()
        # Counted in memory so that the flush loop does not list a directory every tick.
        self._pending = len(self._files())
        self._last_name = 0

    def _files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("*.jsonl"))

    def _release_stale_claims(self) -> None:
        if not self.directory.exists():
            return
        for claimed in self.directory.glob("*.replaying"):
            owner = int(claimed.suffixes[-2].lstrip("."))
            if owner == os.getpid() or not _process_alive(owner):
                claimed.rename(claimed.with_name(claimed.name.split(".")[0] + ".jsonl"))

    def pending_files(self) -> int:
        return self._pending

    def has_backlog(self) -> bool:
        return self._pending > 0

    def write(self, batch: list[QueuedEvent]) -> list[QueuedEvent]:
        """Store ``batch`` durably (fsync'd file, then an atomic rename); returns the events
        that could not be encoded, which are left out. Raises OSError when the spool cannot
        be written (disk full, read-only): then nothing of the batch is in it."""
        lines: list[str] = []
        unencodable: list[QueuedEvent] = []
        for table_name, row in batch:
            try:
                lines.append(json.dumps({"t": table_name, "r": row}, default=_encode) + "\n")
            except (TypeError, ValueError):
                unencodable.append((table_name, row))
        if not lines:
            return unencodable
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = max(time_ns(), self._last_name + 1)  # strictly increasing within a process
        self._last_name = stamp
        path = self.directory / f"{stamp:020d}-{os.getpid()}.jsonl"
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_directory(self.directory)  # the rename itself survives a power loss
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        self._pending += 1
        return unencodable

    def check_writable(self) -> None:
        """Raise OSError unless a batch could be spooled now (a probe file, fsync'd)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".probe-{os.getpid()}.tmp"
        with probe.open("w", encoding="utf-8") as handle:
            handle.write("ok")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()

    def claim_oldest(self) -> tuple[Path, list[QueuedEvent]] | None:
        """Take the oldest batch for replay; None when the spool is empty."""
        for path in self._files():
            claimed = path.with_name(f"{path.stem}.{os.getpid()}.replaying")
            try:
                path.rename(claimed)
            except FileNotFoundError:  # another process claimed it first
                self._pending = max(0, self._pending - 1)
                continue
            batch: list[QueuedEvent] = []
            with claimed.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        item = json.loads(line)
                        batch.append((item["t"], _decode_row(_SHAPES[item["t"]], item["r"])))
            return claimed, batch
        self._pending = 0
        return None

    def done(self, claimed: Path) -> None:
        claimed.unlink()
        self._pending = max(0, self._pending - 1)

    def release(self, claimed: Path) -> None:
        """Put a claimed batch back, unchanged, for a later replay."""
        claimed.rename(claimed.with_name(claimed.name.split(".")[0] + ".jsonl"))


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
