"""`[metrics] listen`: a second listener that answers GET /metrics without a key, and nothing else.

Meant for a Prometheus on the same machine or a private network, so it is
kept small: one request per connection, a bounded head read within a
deadline, a cap on connections at once.  Start-up warns when it listens on
an address other machines can reach (app.py).
"""

from __future__ import annotations

import asyncio
import os
from typing import Awaitable, Callable

from .metrics import CONTENT_TYPE

MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0
MAX_CONNECTIONS = 32


def _answer(status: bytes, body: bytes, *headers: bytes, head_only: bool = False) -> bytes:
    lines = [b"HTTP/1.1 " + status, *headers, b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)


class MetricsListener:
    def __init__(self, scrape: Callable[[], Awaitable[bytes]]) -> None:
        self.scrape = scrape
        self.server: asyncio.Server | None = None
        self.open = 0

    async def start(self, host: str, port: int) -> None:
        # (SO_REUSEADDR on Windows would let another program take the port too.)
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD,
                                                 reuse_address=os.name == "posix")

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            if self.open > MAX_CONNECTIONS:
                return
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            writer.write(await self.answer(head))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()

    async def answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _answer(b"400 Bad Request", b"bad request\n")
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != b"/metrics":
            return _answer(b"404 Not Found", b"only /metrics is served here\n")
        if method not in (b"GET", b"HEAD"):
            return _answer(b"405 Method Not Allowed", b"", b"Allow: GET, HEAD")
        return _answer(b"200 OK", await self.scrape(), b"Content-Type: " + CONTENT_TYPE, b"Cache-Control: no-store",
                       head_only=method == b"HEAD")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
