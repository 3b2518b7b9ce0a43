"""Every Protocol guardproxy owns takes any bytes-like chunk, as the asyncio contract says.

Both Linux loops hand `data_received` a fresh `bytes`; Windows' ProactorEventLoop hands it
a `bytearray`, and a loop may pass a `memoryview` of a buffer it reuses once the call has
returned.  An event loop here re-delivers what the sockets read to guardproxy's client-side
(ClientConnection) and upstream-side (UpstreamConnection) protocols as each of the three
types, in small pieces, and scribbles over the buffer after each call: a protocol that kept
a reference instead of the bytes would send or count garbage.  Real sockets, a real gate,
a scripted upstream; every response framing (Content-Length, chunked, an NDJSON token
stream, close-delimited) behind a request framed by Content-Length and by chunks.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import KEY, Proxy, start_proxy
from guardproxy.engine.client import ClientConnection
from guardproxy.engine.relay import UpstreamConnection
from guardproxy.wire.framing import dechunk
from support.raw_http import read_raw_until_close
from support.upstreams import RecordingUpstream, read_request

KINDS = ("bytes", "bytearray", "memoryview")
SHAPES = ("length", "chunked", "ndjson", "close")
PIECE = 13  # bytes per delivery: heads, chunk-size lines and CRLFs split across calls
SCRIBBLE = 0xEE

TOKENS = [f" tok{i}" for i in range(40)]
BULK = bytes(range(256)) * 300  # 76,800 bytes: more than one socket read


def _ndjson_lines() -> list[bytes]:
    lines = [json.dumps({"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z", "response": t,
                         "done": False}).encode() + b"\n" for t in TOKENS]
    lines.append(json.dumps({"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z", "response": "",
                             "done": True, "done_reason": "stop", "prompt_eval_count": 26,
                             "eval_count": len(TOKENS)}).encode() + b"\n")
    return lines


def _chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)


def expected_body(shape: str) -> bytes:
    """The response body as the client must receive it (the relay never re-frames)."""
    if shape == "ndjson":
        return b"".join(_chunk(line) for line in _ndjson_lines()) + b"0\r\n\r\n"
    if shape == "chunked":
        return b"".join(_chunk(BULK[i:i + 5000], b";n=%d" % i) for i in range(0, len(BULK), 5000)) + b"0\r\n\r\n"
    return BULK


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: RecordingUpstream) -> None:
    while True:
        head = await read_request(reader, up)
        shape = head.lower().split(b"\r\nx-shape: ", 1)[1].split(b"\r\n", 1)[0].decode()
        if shape == "ndjson":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for line in _ndjson_lines():  # one token per chunk, each flushed on its own
                writer.write(_chunk(line))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif shape == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + expected_body("chunked"))
        elif shape == "length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(BULK) + BULK)
        else:  # close-delimited: the upstream's close ends the body
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + BULK)
            await writer.drain()
            writer.close()
            return
        await writer.drain()


class Rebuffer(asyncio.Protocol):
    """Stands between the loop and one of guardproxy's protocols, delivering each read as `kind`."""

    def __init__(self, inner: asyncio.Protocol, kind: str) -> None:
        self.inner = inner
        self.kind = kind
        self.reused = bytearray(PIECE)  # the one buffer every bytearray/memoryview delivery shares
        self.delivered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        for start in range(0, len(data), PIECE):
            piece = data[start:start + PIECE]
            self.delivered += 1
            if self.kind == "bytes":
                self.inner.data_received(piece)
                continue
            buf = self.reused
            if self.kind == "bytearray":
                buf[:] = piece
                self.inner.data_received(buf)
            else:
                buf[:len(piece)] = piece
                view = memoryview(buf)[:len(piece)]
                self.inner.data_received(view)
                view.release()  # fails (BufferError) if the protocol still holds a view of it
            buf[:] = bytes([SCRIBBLE]) * len(buf)  # the loop reuses its buffer for the next read

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class RebufferingLoop(asyncio.SelectorEventLoop):
    """A selector loop that hands guardproxy's own protocols their reads as `kind` (see Rebuffer)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.wrapped: list[Rebuffer] = []

    def _wrap(self, factory: Callable[[], Any], made: list[Any]) -> Callable[[], asyncio.Protocol]:
        def wrapping() -> asyncio.Protocol:
            inner = factory()
            made.append(inner)
            if isinstance(inner, (ClientConnection, UpstreamConnection)):
                outer = Rebuffer(inner, self.kind)
                self.wrapped.append(outer)
                return outer
            return inner  # type: ignore[no-any-return]
        return wrapping

    async def create_connection(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
        made: list[Any] = []
        transport, _ = await super().create_connection(self._wrap(protocol_factory, made), *args, **kwargs)
        return transport, made[0]  # the caller gets its own protocol back, as from any loop

    async def create_server(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
        return await super().create_server(self._wrap(protocol_factory, []), *args, **kwargs)


def request(shape: str, body_framing: str, last: bool) -> bytes:
    body = json.dumps({"model": "llama3.2", "prompt": "hi " * 50, "stream": shape == "ndjson"}).encode()
    head = (f"POST /api/generate HTTP/1.1\r\nHost: gate\r\nX-API-Key: {KEY}\r\nX-Shape: {shape}\r\n"
            + ("Connection: close\r\n" if last else ""))
    if body_framing == "length":
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + _chunk(body[:100]) + _chunk(body[100:]) \
        + b"0\r\n\r\n"


def split_response(raw: bytes) -> tuple[bytes, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:200]
    return head, body


async def scenario(shape: str, tmp_path: Path) -> tuple[list[bytes], Proxy, RecordingUpstream]:
    up = await RecordingUpstream.start(answer)
    proxy = await start_proxy(up.port, tmp_path)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            # Two requests on one client connection (the second reuses the pooled upstream
            # connection), the first with a Content-Length body, the second chunked.
            writer.write(request(shape, "length", last=False))
            await writer.drain()
            first_head = await reader.readuntil(b"\r\n\r\n")
            want = expected_body(shape)
            if shape == "close":
                # A close-delimited upstream body reaches the client delimited by the close too.
                assert b"connection: close" in first_head.lower()
                return [first_head + await read_raw_until_close(reader, 10)], proxy, up
            first = first_head + await reader.readexactly(len(want))
            writer.write(request(shape, "chunked", last=True))
            await writer.drain()
            second = await read_raw_until_close(reader, 10)
            return [first, second], proxy, up
        finally:
            writer.close()
    finally:
        await proxy.server.stop(grace=0)
        proxy.server.access_log.close()
        await up.close()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_any_bytes_like_chunk_over_every_framing(kind: str, shape: str, tmp_path: Path) -> None:
    loop = RebufferingLoop(kind)
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        responses, proxy, up = runner.run(asyncio.wait_for(scenario(shape, tmp_path), 30))
    # Both sides really went through the re-delivering loop, in many small pieces.
    sides = {type(w.inner) for w in loop.wrapped}
    assert sides == {ClientConnection, UpstreamConnection}
    assert all(w.delivered > 1 for w in loop.wrapped)
    want = expected_body(shape)
    for raw in responses:
        head, body = split_response(raw)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert body == want  # bytes out == bytes in, exactly
    # What reached the upstream: the request bodies as the client framed them, decoded and re-framed.
    payload = json.dumps({"model": "llama3.2", "prompt": "hi " * 50, "stream": shape == "ndjson"}).encode()
    assert len(up.bodies) == len(responses)
    for head, body in zip(up.heads, up.bodies):
        chunked = b"\r\ntransfer-encoding: chunked\r\n" in head.lower()
        assert (dechunk(body, 1 << 20) if chunked else body) == payload
    lines = proxy.log_lines()
    assert [line["status"] for line in lines] == [200] * len(responses)
    if shape == "ndjson":
        # The token counts come from the kept tail of the stream: a kept reference to a
        # reused buffer would have been scribbled over.
        assert [(line.get("prompt_tokens"), line.get("completion_tokens")) for line in lines] \
            == [(26, len(TOKENS))] * 2
