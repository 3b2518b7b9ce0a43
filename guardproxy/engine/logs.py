"""Operational messages: start-up, reloads, shutdown, warnings and errors, through one `guardproxy` logger.

Each message is one plain line on stderr: "guardproxy: listening on ...",
"guardproxy: warning: ...".  Under systemd, whose journal keeps stderr,
each line starts with the syslog priority in angle brackets instead ("<4>"
for a warning; the journal names the program itself): journald reads that
prefix as the line's level and strips it, so `journalctl -p warning -u
guardproxy` works.  It is written only when stderr is the journal (systemd
says so in $JOURNAL_STREAM), never on a terminal or into a file, where it
would be noise.  The Windows service logs into a rotated file with a UTC time
on each line (ops/winservice/logfile.py).

The access log is not this: it is a lean writer of its own, on the request
path (accesslog.py).  Nor is command output meant for a person.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO

from ..wire.printable import printable

NAME = "guardproxy"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_WORDS = {logging.DEBUG: "debug: ", logging.WARNING: "warning: "}  # an error's text says it is one
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

log = logging.getLogger(NAME)
_pinned = False  # --log-level was given: a reloaded [log] level does not replace it


class LineFormatter(logging.Formatter):
    """"guardproxy: [warning: ]text", a traceback on the lines below; "<4>warning: text" for the journal."""

    def __init__(self, *, journal: bool = False, stamp: bool = False) -> None:
        super().__init__()
        self.journal = journal
        self.stamp = stamp

    def format(self, record: logging.LogRecord) -> str:
        # A message may quote what a client or a host sent: no control character reaches the terminal.
        text = f"{_WORDS.get(record.levelno, '')}{printable(record.getMessage())}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if not self.journal:
            text = f"{NAME}: {text}"
        else:  # on every line: journald reads each one on its own
            prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        if self.stamp:
            text = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime(record.created)) + text
        return text


def is_journal(stream: IO[str]) -> bool:
    """Whether `stream` is systemd's journal ($JOURNAL_STREAM is "device:inode" of that stream)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def setup(level: str = "info", handler: logging.Handler | None = None, *, pinned: bool = False) -> logging.Handler:
    """Send the messages to `handler` (default: plain lines on stderr); replaces an earlier setup."""
    global _pinned
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter(journal=is_journal(sys.stderr)))
    reset()
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(LEVELS[level])
    _pinned = pinned
    return handler


def apply_level(level: str) -> None:
    """The config's [log] level, at start-up and on every reload, unless --log-level fixed one."""
    if not _pinned:
        log.setLevel(LEVELS[level])


def reset() -> None:
    """Back to no setup (handlers closed), as a library logger is: for the service host and tests."""
    global _pinned
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = True
    log.setLevel(logging.NOTSET)
    _pinned = False
