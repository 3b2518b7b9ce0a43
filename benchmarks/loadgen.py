"""Load generators: keep-alive HTTP/1.1 clients as asyncio Protocols, and checks.

A client keeps every byte of a response and its arrival times, so each
response can be checked against the one the fake Ollama gives directly (its
bytes hashed after masking the fields that carry the clock) and so the
per-token latency can be read from each line's `created_at`, the fake's real
send time.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import time
from datetime import datetime


class CheckFailed(Exception):
    """A response whose bytes differ from what the upstream sent."""


class Response:
    __slots__ = ("status", "head", "body", "sent", "times")

    def __init__(self, status: int, head: bytes, body: bytes, sent: float, times: list[tuple[float, int]] | None):
        self.status = status
        self.head = head
        self.body = body
        self.sent = sent
        self.times = times


class Client(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, track: bool = False) -> None:
        self.track = track
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_end = -1
        self.length = -1  # -1: chunked
        self.times: list[tuple[float, int]] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.head_waiter: asyncio.Future[None] | None = None
        self.lost = False

    @classmethod
    async def connect(cls, port: int, track: bool = False) -> "Client":
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(track), "127.0.0.1", port)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    reads = 0  # reads by all clients: at a slow pace, one per token line

    def data_received(self, data: bytes) -> None:
        Client.reads += 1
        buf = self.buf
        buf += data
        if self.track:
            self.times.append((time.time(), len(buf)))  # type: ignore[union-attr]
        if self.head_end < 0:
            idx = buf.find(b"\r\n\r\n")
            if idx < 0:
                return
            self.head_end = idx + 4
            head = bytes(buf[:idx]).lower()
            m = re.search(rb"\r\ncontent-length: *(\d+)", head)
            self.length = int(m.group(1)) if m else -1
            if head.startswith(b"http/1.1 1"):  # interim response: not ours
                del buf[:idx + 4]
                self.head_end = -1
                return
            if self.head_waiter is not None and not self.head_waiter.done():
                self.head_waiter.set_result(None)
        if self.length >= 0:
            done = len(buf) >= self.head_end + self.length
        else:
            done = buf.endswith(b"\r\n0\r\n\r\n")
        if done and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for w in (self.waiter, self.head_waiter):
            if w is not None and not w.done():
                w.set_exception(CheckFailed("connection closed mid-response"))

    async def request(self, raw: bytes, *, wait_head_only: bool = False) -> Response:
        loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.head_end = -1
        self.times = [] if self.track else None
        self.waiter = loop.create_future()
        self.head_waiter = loop.create_future()
        if self.lost:
            raise CheckFailed("connection closed before the request")
        sent = time.time()
        self.transport.write(raw)  # type: ignore[union-attr]
        if wait_head_only:
            await self.head_waiter
            return Response(0, b"", b"", sent, None)
        await self.waiter
        return self.response(sent)

    def response(self, sent: float) -> Response:
        buf = self.buf
        head = bytes(buf[:self.head_end])
        status = int(head[9:12])
        end = self.head_end + self.length if self.length >= 0 else len(buf)
        return Response(status, head, bytes(buf[self.head_end:end]), sent, self.times)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def http_request(method: str, path: str, key: str | None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: guardproxy-bench"]
    if key:
        lines.append(f"X-API-Key: {key}")
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- checks -------------------------------------------------------------------

def dechunk(body: bytes) -> list[bytes]:
    """The chunks of a chunked body; raises CheckFailed on any framing error."""
    out = []
    pos = 0
    n = len(body)
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise CheckFailed("chunk size line missing")
        try:
            size = int(body[pos:eol], 16)
        except ValueError:
            raise CheckFailed("bad chunk size") from None
        start = eol + 2
        if size == 0:
            if body[start:] != b"\r\n":
                raise CheckFailed("bytes after the last chunk")
            return out
        end = start + size
        if end + 2 > n or body[end:end + 2] != b"\r\n":
            raise CheckFailed("chunk shorter than its size")
        out.append(body[start:end])
        pos = end + 2


# The fields that carry the upstream's clock: masked before hashing.
_CLOCK = re.compile(rb'"created_at":"[^"]*"|"(?:total|eval)_duration":\d+')


def stream_digest(body: bytes) -> str:
    """Hash of the de-chunked payload with the clock fields masked.

    A proxy may legitimately re-chunk (nginx merges lines that arrive
    together), so the chunk boundaries are checked for framing, not compared.
    """
    return hashlib.sha256(_CLOCK.sub(b"", b"".join(dechunk(body)))).hexdigest()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


_CREATED = re.compile(rb'"created_at":"([^"]*)"')


def token_latencies(resp: Response) -> tuple[list[float], float]:
    """(seconds from each token line's send time to its arrival, time to first token)."""
    times = resp.times or []
    body_start = len(resp.head)
    lat: list[float] = []
    ttft = 0.0
    pos = 0
    t_idx = 0
    body = resp.body
    for m in _CREATED.finditer(body):
        end = body.find(b"\n", m.end())
        offset = body_start + end + 1  # the line is whole once its newline arrived
        while t_idx < len(times) and times[t_idx][1] < offset:
            t_idx += 1
        if t_idx == len(times):
            break
        arrived = times[t_idx][0]
        sent = datetime.fromisoformat(m.group(1).decode()).timestamp()
        if not lat:
            ttft = arrived - resp.sent
        lat.append(arrived - sent)
        pos = end
    del pos
    return lat[:-1] if len(lat) > 1 else lat, ttft  # the last line is the summary, not a token
