"""Access log: one JSON line per request, written when the request ends.

`LogRecord` is the one definition of a line's fields: the engine fills one
in as a request goes, and the `usage` report reads lines back through it.
Lines are gathered during one event-loop turn and written together, so a
busy proxy makes one write call per turn instead of one per request.

For log rotation (logrotate's default renames the file) SIGHUP and SIGUSR1
reopen the file by its name, as nginx does on SIGUSR1; a write that fails
(a full disk) loses its lines but is counted (`write_errors`, in /metrics).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

log = logging.getLogger("guardproxy")
REOPEN_SIGNALS = ("SIGHUP", "SIGUSR1")  # (neither exists on Windows: there the log is never reopened)

# Optional fields appear in a line only when they have a value.
_OPTIONAL = ("key_state", "error", "model", "alias", "prompt_tokens", "completion_tokens", "upstream", "clamped")
_utc_second = -1   # the last second formatted: one strftime per second, not per line
_utc_text = ""


def _utc(at: float) -> str:
    global _utc_second, _utc_text
    sec = int(at)
    if sec != _utc_second:
        _utc_second, _utc_text = sec, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))
    return _utc_text


MAX_FIELD = 256  # characters of a client-supplied string (method, path, model) kept in a line


def cut(text: str, limit: int = MAX_FIELD) -> str:
    """A client-supplied string as logged: at most `limit` characters, and marked when cut."""
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text)} chars, cut]"


@dataclass(slots=True)
class LogRecord:
    time: str                # UTC, second resolution, when the request head was read ("" until written)
    client: str              # the client address (after trusted proxies)
    method: str = ""
    path: str = ""           # without the query string
    status: int = 0          # 499: the client hung up
    bytes_in: int = 0        # head and body bytes read from the client
    bytes_out: int = 0       # bytes written to the client
    duration_ms: float = 0.0
    ttfb_ms: float | None = None  # until the upstream's response head
    key: str | None = None   # the key's name, never the key
    request_id: str = ""     # the client's X-Request-Id if safe, else guardproxy's; sent upstream and back
    outcome: str = "ok"      # ok | client_gone | upstream_error | refused
    error: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    upstream: str | None = None  # the name of the host that answered (the last one tried)
    alias: str | None = None   # the model name asked for when it was an [aliases] name ("model" is its target)
    clamped: list[str] | None = None  # body fields the key's limits lowered or set (as X-Guardproxy-Clamped)
    key_state: str | None = None  # a refused key that is configured: "revoked", "expired" or "rotated" (its old value)
    at: float = 0.0          # the wall clock at `time`: formatted only if the line is written

    @classmethod
    def new(cls, client: str, bytes_in: int) -> "LogRecord":
        return cls("", client, bytes_in=bytes_in, at=time.time())

    def add_usage(self, counts: dict[str, Any]) -> None:
        """A generation's token counts (engine/tokens.py), and its model as Ollama named it."""
        self.model = counts.get("model", self.model)
        self.prompt_tokens, self.completion_tokens = counts.get("prompt_tokens"), counts.get("completion_tokens")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": self.time or _utc(self.at), "client": self.client, "method": self.method, "path": self.path,
            "status": self.status, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "duration_ms": self.duration_ms, "ttfb_ms": self.ttfb_ms, "key": self.key, "outcome": self.outcome,
            "request_id": self.request_id}
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_line(cls, line: str) -> "LogRecord | None":
        """A record read back from a log line; None for a line that is not one (hand edits, other tools).

        Fields of the wrong type are read as absent, so one odd line cannot stop a report.
        """
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        rec = cls("", "-")
        for name in ("time", "client", "method", "path", "outcome", "key", "key_state", "error", "model", "request_id",
                     "upstream", "alias"):
            value = data.get(name)
            if value is not None:
                setattr(rec, name, value if isinstance(value, str) else str(value))
        for name in ("status", "bytes_in", "bytes_out", "prompt_tokens", "completion_tokens"):
            value = data.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(rec, name, value)
        clamped = data.get("clamped")
        if isinstance(clamped, list):
            rec.clamped = [str(c) for c in clamped]
        for name in ("duration_ms", "ttfb_ms"):
            value = data.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(rec, name, float(value))
        return rec


def access_log_problem(target: str) -> str | None:
    """Why `run` could not open this [log] access target for appending, or None (stdout and off always work).

    Looked at without creating anything, so `doctor` can ask it too (as root it must not
    leave behind a log file the service's own user cannot write)."""
    if target in ("", "-"):
        return None
    path = os.path.abspath(target)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        return f"cannot open {target!r}: it is a folder"
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return f"cannot open {target!r}: permission denied"
        return None
    if not os.path.isdir(folder):
        return f"cannot open {target!r}: its folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot open {target!r}: permission denied to create it in {folder}"
    return None


class AccessLog:
    def __init__(self, target: str) -> None:
        self.enabled = target != ""
        self.target = target
        self._own = False
        self._stream: IO[str] | None = None
        if target == "-":
            self._stream = sys.stdout
        elif target:
            self._stream = open(target, "a", encoding="utf-8")
            self._own = True
        self._pending: list[str] = []
        self.write_errors = 0  # writes that failed, their lines lost

    def reopen(self) -> bool:
        """Open the file by its name again (after a rotation renamed it); False, and the old file
        kept, when it cannot be opened."""
        if not self._own or self._stream is None:
            return False
        self.flush()  # what was gathered belongs to the old file
        try:
            fresh = open(self.target, "a", encoding="utf-8")
        except OSError as e:
            log.warning("access log %s: cannot reopen (%s): still writing to the old file", self.target,
                        e.strerror or e)
            return False
        old, self._stream = self._stream, fresh
        try:
            old.close()
        except OSError:
            self.write_errors += 1
        return True

    def record(self, rec: LogRecord) -> None:
        if self._stream is None:
            return
        line = json.dumps(rec.to_dict(), separators=(",", ":")) + "\n"
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a test, a command): write at once
                self._pending.append(line)
                self.flush()
                return
        self._pending.append(line)

    def flush(self) -> None:
        if self._stream is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._stream.write("".join(lines))
            self._stream.flush()
        except (OSError, ValueError):
            self.write_errors += 1  # a full disk or closed stdout must not take the proxy down

    def close(self) -> None:
        self.flush()
        if self._own and self._stream is not None:
            try:
                self._stream.close()  # (it flushes what a failed write left in its buffer)
            except OSError:
                self.write_errors += 1
        self._stream = None


def reopen_on_signals(loop: asyncio.AbstractEventLoop, access_log: AccessLog,
                      names: tuple[str, ...] = REOPEN_SIGNALS) -> list[str]:
    """These signals reopen the access log; the ones it could handle (none on Windows, where
    neither signal exists and the loop has no signal handlers)."""
    installed = []
    for name in names:
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            loop.add_signal_handler(sig, access_log.reopen)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(name)
    return installed
