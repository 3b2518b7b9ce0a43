"""Access log: one JSON line per request, written when the request ends.

Lines are gathered during one event-loop turn and written together, so a
busy proxy makes one write call per turn instead of one per request.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import IO, Any


class AccessLog:
    def __init__(self, target: str) -> None:
        self.enabled = target != ""
        self._own = False
        self._stream: IO[str] | None = None
        if target == "-":
            self._stream = sys.stdout
        elif target:
            self._stream = open(target, "a", encoding="utf-8")
            self._own = True
        self._pending: list[str] = []

    def record(self, entry: dict[str, Any]) -> None:
        if self._stream is None:
            return
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self._pending.append(json.dumps(entry, separators=(",", ":")) + "\n")
                self.flush()
                return
        self._pending.append(json.dumps(entry, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        if self._stream is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._stream.write("".join(lines))
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or closed stdout must not take the proxy down

    def close(self) -> None:
        self.flush()
        if self._own and self._stream is not None:
            self._stream.close()
        self._stream = None
