"""One request and its raw HTTP/1.1 response.

Requests are parsed with h11 (server.py), but responses are written as raw
bytes so the exact framing is under our control: every NDJSON line / SSE
event is its own HTTP chunk, handed to the transport and drained on its own.
That lets the test-suite observe whether the proxy in front of us coalesces
or buffers.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Protocol

from .shapes import dumps


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as received, recorded once its body was complete."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header *name* (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class PeerGone(Exception):
    """The client went away while we still had things to send."""


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ServerState(Protocol):
    """What the handlers read and count on the server (FakeOllama)."""

    token_delay: float
    default_tokens: int
    bytes_sent_last_stream: int
    cloud_disabled: bool
    tags_body: bytes
    ps_body: bytes
    v1_models_body: bytes

    def next_id(self) -> int: ...


_date_cache_sec = -1
_date_cache_value = b""


def http_date() -> bytes:
    global _date_cache_sec, _date_cache_value
    sec = int(time.time())
    if sec != _date_cache_sec:
        _date_cache_value = formatdate(sec, usegmt=True).encode()
        _date_cache_sec = sec
    return _date_cache_value


class Exchange:
    """Writes one raw HTTP/1.1 response for one parsed request."""

    __slots__ = (
        "fake",
        "reader",
        "writer",
        "method",
        "path",
        "query",
        "request",
        "keep_alive",
        "chunked",
        "streaming",
        "started",
        "_pending_head",
    )

    def __init__(
        self,
        fake: ServerState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: RecordedRequest,
        http_version: bytes,
    ) -> None:
        self.fake = fake
        self.reader = reader
        self.writer = writer
        self.request = request
        self.method = request.method
        path, _, query = request.target.partition("?")
        self.path = path
        self.query = query
        conn_tokens = {
            t.strip().lower()
            for k, v in request.headers
            if k == "connection"
            for t in v.split(",")
        }
        self.keep_alive = http_version != b"1.0" and "close" not in conn_tokens
        # HTTP/1.0 peers cannot decode chunked framing; stream raw and close.
        self.chunked = http_version != b"1.0"
        self.streaming = False
        self.started = False
        self._pending_head = b""

    def _head(
        self, status: int, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
        for name, value in headers:
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(b"Date: %s\r\n" % http_date())
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def send_full(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json; charset=utf-8",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"Content-Type", content_type)] if body or status != 403 else []
        headers.append((b"Content-Length", b"%d" % len(body)))
        if extra:
            headers.extend(extra)
        self.started = True
        head = self._head(status, headers)
        self.writer.write(head if self.method == "HEAD" else head + body)
        await self.writer.drain()

    async def send_json(self, status: int, obj: Any) -> None:
        await self.send_full(status, dumps(obj))

    async def send_error(self, status: int, message: str) -> None:
        if self.path.startswith("/v1/"):
            err: dict[str, Any] = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error" if status < 500 else "api_error",
                    "param": None,
                    "code": None,
                }
            }
        else:
            err = {"error": message}
        await self.send_json(status, err)

    # -- streaming ---------------------------------------------------------

    def begin_stream(
        self, content_type: bytes, content_length: int | None = None
    ) -> None:
        """Prepare a streamed response; the head goes out with the first chunk.

        Holding the head back matches Ollama, whose headers only reach the
        wire together with the first generated line.
        """
        headers = [(b"Content-Type", content_type)]
        if content_length is not None:
            headers.append((b"Content-Length", b"%d" % content_length))
            self.chunked = False
        elif self.chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        else:
            self.keep_alive = False
        if content_type == b"text/event-stream":
            headers.append((b"Cache-Control", b"no-cache"))
        self._pending_head = self._head(200, headers)
        self.streaming = True
        self.started = True
        self.fake.bytes_sent_last_stream = 0

    def _check_peer(self) -> None:
        if self.writer.transport.is_closing() or self.reader.at_eof():
            raise PeerGone()

    async def stream_chunk(self, payload: bytes) -> None:
        self._check_peer()
        if self.chunked:
            frame = b"%x\r\n%b\r\n" % (len(payload), payload)
        else:
            frame = payload
        if self._pending_head:
            frame = self._pending_head + frame
            self._pending_head = b""
        try:
            self.writer.write(frame)
            self.fake.bytes_sent_last_stream += len(payload)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise PeerGone() from exc

    async def end_stream(self) -> None:
        self._check_peer()
        tail = b"0\r\n\r\n" if self.chunked else b""
        data = self._pending_head + tail
        self._pending_head = b""
        if not data:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise PeerGone() from exc


Handler = Callable[[Exchange], Awaitable[None]]
