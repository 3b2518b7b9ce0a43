"""The asynchronous edges of the policies: waiting for a generation slot,
reading a small request body to find its model, and fetching a model list
to filter it.  The decisions themselves live in the pure modules
(limits.py, policy.py); this is only the waiting and the I/O.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..wire.errors import BadGateway, BadRequest, PayloadTooLarge, ServiceUnavailable
from ..wire.framing import BodyTooLarge, ChunkedDecoder, FramingError
from ..wire.heads import CONTINUE, RequestHead, build_upstream_head, parse_response_head
from ..decisions.limits import ConcurrencyGate, QueueFull
from .pool import upstream_failure

if TYPE_CHECKING:
    from .server import ClientConnection

MAX_LISTING = 8 * 1024 * 1024  # a /api/tags answer is a few KiB; this is a generous cap


class QueueTimeout(ServiceUnavailable):
    message = "all generation slots are busy; try again later"


async def acquire_slot(gate: ConcurrencyGate, key: str, key_limit: int | None, timeout: float) -> None:
    """Wait, in fair order across keys, for a generation slot; 503 after `timeout`."""
    if gate.try_acquire(key, key_limit):
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        gate.enqueue(key, key_limit, waiter)
    except QueueFull:
        raise QueueTimeout("too many requests are waiting for a generation slot",
                           headers=[("Retry-After", "1")]) from None
    try:
        async with asyncio.timeout(timeout):
            await waiter
    except BaseException as exc:
        if not gate.cancel(key, waiter):
            # Granted in the same instant it gave up: hand the slot on.
            wake(gate.release(key))
        if not waiter.done():
            waiter.cancel()
        if isinstance(exc, TimeoutError):
            raise QueueTimeout(headers=[("Retry-After", "1")]) from None
        raise


def wake(waiters: list[object]) -> None:
    for w in waiters:
        if isinstance(w, asyncio.Future) and not w.done():
            w.set_result(None)


async def read_small_body(conn: "ClientConnection", req: RequestHead, limit: int, timeout: float) -> bytes:
    """The whole request body, de-chunked, at most `limit` bytes (413 beyond)."""
    if req.expect_continue and req.http_version == b"1.1":
        conn.transport.write(CONTINUE)
    if not req.chunked:
        n = req.content_length or 0
        if n > limit:
            raise PayloadTooLarge()
        out = bytearray()
        while len(out) < n:
            data = await conn.peek(n - len(out), timeout)
            conn.consume(len(data))
            out += data
        return bytes(out)
    decoder = ChunkedDecoder(limit)
    pieces: list[bytes] = []
    while not decoder.done:
        data = await conn.peek(65536, timeout)
        try:
            got, end = decoder.feed(data)
        except BodyTooLarge:
            raise PayloadTooLarge() from None
        except FramingError as e:
            raise BadRequest(f"malformed chunked body: {e}") from None
        conn.consume(len(data) if end < 0 else end)
        pieces += got
    return b"".join(pieces)


def dechunk(raw: bytes, limit: int) -> bytes:
    """The payload of a complete chunked body; ValueError if it is malformed, cut short or too big."""
    decoder = ChunkedDecoder(limit)
    try:
        pieces, _ = decoder.feed(raw)
    except FramingError as e:
        raise ValueError(str(e)) from None
    if not decoder.done:
        raise ValueError("chunked body cut short")
    return b"".join(pieces)


def with_body(req: RequestHead, body: bytes) -> RequestHead:
    """The same request, framed with a Content-Length for a body that has already been read."""
    headers = [h for h in req.headers if h[0] not in (b"content-length", b"transfer-encoding")]
    headers.append((b"content-length", b"Content-Length", str(len(body)).encode()))
    return RequestHead(req.method, req.target, req.http_version, headers, req.keep_alive,
                       len(body), False, False, req.host)


async def fetch_whole(host: str, port: int, authority: bytes, req: RequestHead, client_ip: bytes,
                      extra: bytes, connect_timeout: float, read_timeout: float) -> tuple[int, bytes, bytes]:
    """One small GET on its own connection: (status, head lines without framing, body)."""
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise upstream_failure(exc) from None
    try:
        # Identity encoding: the body is read as JSON here.
        plain = RequestHead(req.method, req.target, req.http_version,
                            [h for h in req.headers if h[0] != b"accept-encoding"], req.keep_alive,
                            req.content_length, req.chunked, False, req.host)
        head = build_upstream_head(plain, authority, client_ip, b"http")
        writer.write(head[:-2] + b"Connection: close\r\n\r\n")
        try:
            async with asyncio.timeout(read_timeout):
                data = await reader.read(MAX_LISTING + 65536)
                while True:
                    more = await reader.read(MAX_LISTING + 65536 - len(data))
                    if not more:
                        break
                    data += more
                    if len(data) >= MAX_LISTING + 65536:
                        raise BadGateway("upstream model list too large")
        except TimeoutError:
            raise upstream_failure(TimeoutError()) from None
        except OSError as exc:
            raise upstream_failure(exc) from None
    finally:
        writer.close()
    idx = data.find(b"\r\n\r\n")
    if idx < 0:
        raise upstream_failure(OSError())
    rh = parse_response_head(data[:idx + 4], head_request=False, client_keep_alive=True, extra=extra)
    rest = data[idx + 4:]
    if rh.chunked:
        try:
            body = dechunk(rest, MAX_LISTING)
        except ValueError:
            raise upstream_failure(OSError()) from None
    elif rh.content_length is not None:
        body = rest[:rh.content_length]
    else:
        body = rest
    lines = [ln for ln in rh.head[:-4].split(b"\r\n")
             if not ln.lower().startswith((b"content-length:", b"transfer-encoding:", b"connection:"))]
    return rh.status, b"\r\n".join(lines) + b"\r\n", body
