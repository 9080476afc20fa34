"""Show the programs' log files in the foreground, each line prefixed with its program's name."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class _Cursor:
    """Where we are in one log file; a new inode or a shorter file means supervisord rotated it."""

    inode: int | None = None
    offset: int = 0
    partial: bytes = b""


class LogFollower(threading.Thread):
    """A thread that polls log files and copies their new lines to ``out`` (like ``tail -F``)."""

    def __init__(self, paths: Mapping[str, Path], out: TextIO, lock: threading.Lock, interval_s: float = 0.25) -> None:
        super().__init__(name="kiln-log-follower", daemon=True)
        self.paths = dict(paths)
        self.out = out
        self.lock = lock
        self.interval_s = interval_s
        self._stop_event = threading.Event()
        width = max((len(name) for name in self.paths), default=0)
        self._prefixes = {name: f"{name:<{width}} | " for name in self.paths}
        # Lines written before we started belong to earlier runs: start at the current ends.
        self._cursors = {name: self._cursor_at_end(path) for name, path in self.paths.items()}

    @staticmethod
    def _cursor_at_end(path: Path) -> _Cursor:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return _Cursor()
        return _Cursor(inode=stat.st_ino, offset=stat.st_size)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.poll()
        self.poll()

    def stop(self) -> None:
        """Copy what is left, then end the thread."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)

    def poll(self) -> None:
        """Copy every complete new line of every file once."""
        for name, path in self.paths.items():
            lines = self._read_new_lines(path, self._cursors[name])
            if lines:
                prefix = self._prefixes[name]
                with self.lock:
                    self.out.write("".join(f"{prefix}{line}\n" for line in lines))
                    self.out.flush()

    @staticmethod
    def _read_new_lines(path: Path, cursor: _Cursor) -> list[str]:
        try:
            with open(path, "rb") as file:
                stat = os.fstat(file.fileno())
                if stat.st_ino != cursor.inode or stat.st_size < cursor.offset:
                    cursor.inode, cursor.offset, cursor.partial = stat.st_ino, 0, b""
                file.seek(cursor.offset)
                chunk = file.read()
        except FileNotFoundError:
            return []
        cursor.offset += len(chunk)
        *complete, cursor.partial = (cursor.partial + chunk).split(b"\n")
        return [line.decode(errors="replace").rstrip("\r") for line in complete]
