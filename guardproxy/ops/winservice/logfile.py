"""The service's log files, next to the config and rotated by size: its messages and the access log.

A service has no console.  Its messages go through logging's
RotatingFileHandler into guardproxy.log, a UTC time on each line; whatever
the process writes to stdout (the access log, when the config says "-")
or stderr goes into files through the same kind of handler, so those
rotate too.
"""

from __future__ import annotations

import io
import logging
import os
from logging.handlers import RotatingFileHandler
from typing import Any

from ...engine.logs import NAME, LineFormatter

LOG_NAME = "guardproxy.log"          # the service's own messages, next to the config
ACCESS_LOG_NAME = "access.log"       # the access log when the config says "-" (stdout)
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5


def service_log_paths(config_path: str, pathmod: Any = os.path) -> tuple[str, str]:
    """(messages log, access log used when the config's log.access is "-"): next to the config."""
    directory = pathmod.dirname(config_path)
    return pathmod.join(directory, LOG_NAME), pathmod.join(directory, ACCESS_LOG_NAME)


def rotating(path: str, *, stamp: bool, max_bytes: int = LOG_MAX_BYTES,
             backups: int = LOG_BACKUPS) -> RotatingFileHandler:
    """guardproxy.log -> guardproxy.log.1 -> ... -> .N, the oldest dropped.  `stamp`: the messages'
    format with a UTC time; else lines as they come (access-log lines carry their own time)."""
    handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(LineFormatter(stamp=True) if stamp else logging.Formatter("%(message)s"))
    return handler


class HandlerStream(io.TextIOBase):
    """A text stream for sys.stdout/sys.stderr that writes whole lines through a handler.

    Lines written together (the access log writes a batch per event-loop
    turn) are one record, so one size check and one write; a partial line
    waits for its end.
    """

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.closed:
            raise ValueError("write to closed log")
        text = self._partial + s
        lines, sep, self._partial = text.rpartition("\n")
        if sep:
            self._emit(lines)
        return len(s)

    def _emit(self, text: str) -> None:
        self.handler.handle(logging.LogRecord(NAME, logging.INFO, __file__, 0, text, None, None))

    def flush(self) -> None:
        if self._partial and not self.closed:
            text, self._partial = self._partial, ""
            self._emit(text)

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes, then marks this stream closed
            self.handler.close()
