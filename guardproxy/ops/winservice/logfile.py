"""The service's log files: messages and the access log, next to the config, rotated by size.

A service has no console: what `guardproxy run` prints to stderr and stdout
goes to these files instead.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any, Callable

LOG_NAME = "guardproxy.log"          # the service's own messages, next to the config
ACCESS_LOG_NAME = "access.log"       # the access log when the config says "-" (stdout)
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5


def service_log_paths(config_path: str, pathmod: Any = os.path) -> tuple[str, str]:
    """(messages log, access log used when the config's log.access is "-"): next to the config."""
    directory = pathmod.dirname(config_path)
    return pathmod.join(directory, LOG_NAME), pathmod.join(directory, ACCESS_LOG_NAME)


# --- rotation ------------------------------------------------------------------------

class RotatingWriter(io.TextIOBase):
    """A text stream for sys.stdout/sys.stderr of a service: a file rotated by size.

    guardproxy.log -> guardproxy.log.1 -> ... -> guardproxy.log.N, oldest dropped.
    With stamp=True each line starts with a UTC timestamp (the messages log;
    access-log lines carry their own time).
    """

    def __init__(self, path: str, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS,
                 *, stamp: bool = False, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.stamp = stamp
        self.clock = clock
        self._at_line_start = True
        self._file = open(path, "ab")
        self._size = self._file.tell()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.closed:
            raise ValueError("write to closed log")
        text = self._stamped(s) if self.stamp else s
        data = text.encode("utf-8", "replace")
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()  # a service can be killed at any moment; lose nothing written
        self._size += len(data)
        return len(s)

    def _stamped(self, s: str) -> str:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime(self.clock()))
        out = []
        for piece in s.splitlines(keepends=True):
            if self._at_line_start:
                out.append(prefix)
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        return "".join(out)

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._file = open(self.path, "ab")
        self._size = 0

    def flush(self) -> None:
        if not self.closed:
            self._file.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes, then marks this stream closed
            self._file.close()
