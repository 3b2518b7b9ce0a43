"""A scriptable fake upstream that records every byte it receives.

The default script answers each request with a small 200; a test passes its
own script to play a faulty upstream (garbage, a stall, a close mid-stream).
Scripts get the raw reader/writer: the point is to send bytes no well-behaved
server library would produce.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RecordingUpstream"], Awaitable[None]]

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class RecordingUpstream:
    def __init__(self, script: Script | None = None) -> None:
        self.script = script or answer_ok
        self.received: list[bytearray] = []   # raw bytes, one entry per connection
        self.heads: list[bytes] = []          # each request head the default script read
        self.bodies: list[bytes] = []         # the body bytes exactly as framed on the wire
        self.connections = 0
        self.got_request = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, script: Script | None = None) -> "RecordingUpstream":
        self = cls(script)
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def saw_nothing(self) -> bool:
        return self.connections == 0 and not any(self.received)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        raw = bytearray()
        self.received.append(raw)
        recording = _RecordingReader(reader, raw)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.script(recording, writer, self)  # type: ignore[arg-type]
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)
        if self._server is not None:
            await self._server.wait_closed()


class _RecordingReader:
    """A StreamReader look-alike that keeps a copy of everything read."""

    def __init__(self, reader: asyncio.StreamReader, raw: bytearray) -> None:
        self._reader = reader
        self._raw = raw

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        self._raw += data
        return data

    async def readuntil(self, sep: bytes = b"\n") -> bytes:
        data = await self._reader.readuntil(sep)
        self._raw += data
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self._reader.readexactly(n)
        self._raw += data
        return data


async def read_request(reader: asyncio.StreamReader, up: RecordingUpstream) -> bytes:
    """One request head and its body (Content-Length or chunked); returns the head."""
    head = await reader.readuntil(b"\r\n\r\n")
    up.heads.append(head)
    lower = head.lower()
    body = b""
    if b"\r\ntransfer-encoding: chunked\r\n" in lower:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line[:-2], 16)
            data = await reader.readexactly(size + 2)
            body += line + data
            if size == 0:
                break
    else:
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                body = await reader.readexactly(int(line.split(b":", 1)[1]))
    up.bodies.append(body)
    up.got_request.set()
    return head


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: RecordingUpstream) -> None:
    while True:
        await read_request(reader, up)
        writer.write(OK_RESPONSE)
        await writer.drain()


async def held_upstream() -> tuple[RecordingUpstream, asyncio.Event]:
    """An upstream that answers each request (200, "{}") only once `release` is set."""
    release = asyncio.Event()

    async def script(reader, writer, up) -> None:  # type: ignore[no-untyped-def]
        while True:
            await read_request(reader, up)
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
    return await RecordingUpstream.start(script), release
