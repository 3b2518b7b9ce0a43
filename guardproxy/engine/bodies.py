"""Request bodies: one iterator over what the client sends, read whole or forwarded.

`RequestBody` walks a body in the client's buffer, de-chunked when it is
chunked, with the silence timeout between reads and the size limit.  It
reads only up to the end of the body, so a pipelined next request stays in
the client's buffer.  Two consumers: `read_whole` (a small body whose model
is checked) and `forward` (copy it upstream with backpressure both ways).
"""

from __future__ import annotations

from typing import AsyncIterator

from ..wire.errors import BadRequest, PayloadTooLarge, RequestTimeout
from ..wire.framing import BodyTooLarge, ChunkedDecoder, FramingError, LengthFraming
from ..wire.heads import RequestHead
from .client import ClientConnection
from .relay import UpstreamConnection

BODY_READ = 65536


class RequestBody:
    """The body of one request, as payload pieces; `wire_bytes` counts what was read off the socket."""

    __slots__ = ("conn", "chunked", "length", "idle_timeout", "limit", "wire_bytes", "deadline")

    def __init__(self, conn: ClientConnection, req: RequestHead, *, idle_timeout: float, limit: int,
                 total_timeout: float | None = None) -> None:
        self.conn = conn
        self.chunked = req.chunked
        self.length = req.content_length or 0
        self.idle_timeout = idle_timeout
        self.limit = limit
        self.wire_bytes = 0
        # A client that trickles a byte now and then stays under the silence
        # timeout forever; the whole body has this long, from its first read.
        self.deadline = None if total_timeout is None else conn.loop.time() + total_timeout

    async def _next(self) -> bytes:
        """The client's next buffered bytes, within both the silence and the whole-body deadline."""
        timeout = self.idle_timeout
        if self.deadline is not None:
            left = self.deadline - self.conn.loop.time()
            if left <= 0:
                raise RequestTimeout("request body took too long")
            if left < timeout:
                try:
                    return await self.conn.peek(BODY_READ, left)
                except RequestTimeout:
                    raise RequestTimeout("request body took too long") from None
        return await self.conn.peek(BODY_READ, timeout)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self.conn
        if not self.chunked:
            # Its size was checked against the limit from the head already.
            framing = LengthFraming(self.length)
            while not framing.done:
                data = await self._next()
                end = framing.feed(data)
                if end >= 0:
                    data = data[:end]
                conn.consume(len(data))
                self.wire_bytes += len(data)
                yield data
            return
        decoder = ChunkedDecoder(self.limit)
        while not decoder.done:
            data = await self._next()
            try:
                pieces, end = decoder.feed(data)
            except BodyTooLarge:
                raise PayloadTooLarge() from None
            except FramingError as e:
                raise BadRequest(f"malformed chunked body: {e}") from None
            used = len(data) if end < 0 else end
            conn.consume(used)
            self.wire_bytes += used
            yield b"".join(pieces)  # may be empty: only framing arrived


async def read_whole(body: RequestBody) -> bytes:
    """The whole payload, at most body.limit bytes (413 beyond)."""
    if not body.chunked and body.length > body.limit:
        raise PayloadTooLarge()
    out = bytearray()
    async for piece in body:
        out += piece
    return bytes(out)


async def forward(body: RequestBody, upstream: UpstreamConnection) -> int:
    """Copy the body upstream with backpressure both ways; returns the body bytes read.

    A Content-Length body passes unchanged.  A chunked body is written again
    in guardproxy's own chunks: extensions and trailers are dropped, so the
    upstream never sees chunk framing guardproxy did not write.  Each write
    restarts the upstream's first-byte clock: the upstream cannot answer
    before it has the body.
    """
    transport = upstream.transport
    assert transport is not None
    loop = upstream.loop
    async for piece in body:
        if piece:  # (an empty chunk would end a chunked body)
            transport.write(b"%x\r\n%s\r\n" % (len(piece), piece) if body.chunked else piece)
        upstream.last_read = loop.time()
        await upstream.drain()
    if body.chunked:
        transport.write(b"0\r\n\r\n")
    return body.wire_bytes

