"""The splice: the only place bytes are copied between the two sockets.

The upstream side is a Protocol, so a token read from Ollama goes out to the
client inside the same data_received call: no await, no queue, no copy.  The
client transport's pause_writing/resume_writing drive the upstream's
pause_reading/resume_reading, so a slow client closes the upstream's TCP
window instead of growing a buffer here.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Callable

from ..wire.errors import BadGateway, BadRequest, GatewayTimeout, GuardError, PayloadTooLarge
from ..wire.framing import (BodyTooLarge, ChunkedDecoder, ChunkedFraming, CloseFraming, Framing,
                      FramingError, LengthFraming, NoBody)
from ..wire.heads import BadUpstreamHead, RequestHead, parse_response_head
from ..ops.usage import TAIL_BYTES  # the end of a generation kept for its token counts

if TYPE_CHECKING:
    from .server import ClientConnection

MAX_RESPONSE_HEAD = 65536
BODY_READ = 65536


class ClientGone(Exception):
    """The client hung up; logged as 499, nothing is sent."""


class UpstreamGone(BadGateway):
    message = "upstream closed the connection"


class UpstreamTimeout(GatewayTimeout):
    message = "upstream read timeout"


class FirstByteTimeout(GatewayTimeout):
    message = "upstream first byte timeout"


_IDLE, _HEAD, _BODY = 0, 1, 2


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream; splices each response to a client."""

    # Slots, not a __dict__: one of these lives per open stream, and past 30
    # attributes CPython stops sharing instance-dict keys (about 1.5 KiB each).
    __slots__ = ("loop", "_on_idle_close", "transport", "closed", "reused", "state", "client",
                 "_client_transport", "_buf", "_framing", "result", "head_sent", "status", "bytes_out",
                 "head_at", "last_read", "read_timeout", "first_byte_timeout", "_timer", "_head_request",
                 "_client_keep_alive", "close_client", "_keep_alive", "_paused_by_client", "_write_paused",
                 "_drain_waiter", "_extra_headers", "_tail0", "_tail1", "_tail2", "_keep_tail")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_idle_close: Callable[["UpstreamConnection"], None]) -> None:
        self.loop = loop
        self._on_idle_close = on_idle_close
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.state = _IDLE
        self.client: ClientConnection | None = None
        self._client_transport: asyncio.Transport | None = None
        self._buf = b""
        self._framing: Framing = NoBody()
        self.result: asyncio.Future[bool] | None = None
        self.head_sent = False
        self.status = 0
        self.bytes_out = 0
        self.head_at = 0.0
        self.last_read = 0.0
        self.read_timeout = 600.0
        self.first_byte_timeout = 300.0
        self._timer: asyncio.TimerHandle | None = None
        self._head_request = False
        self._client_keep_alive = True
        self.close_client = False
        self._keep_alive = False
        self._paused_by_client = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._extra_headers = b""
        # The last three body reads (of a large read only its last 8 KiB):
        # usage.py reads the token counts from them once the response has ended.
        self._tail0: bytes | None = None
        self._tail1: bytes | None = None
        self._tail2: bytes | None = None
        self._keep_tail = False

    # --- lifecycle -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)

    def begin(self, client: "ClientConnection", req: RequestHead, *, keep_alive: bool,
              read_timeout: float, first_byte_timeout: float | None = None,
              extra_headers: bytes = b"", keep_tail: bool = False) -> "asyncio.Future[bool]":
        """Attach to a client for one request; the future says if the connection is reusable."""
        self.client = client
        self._client_transport = client.transport
        client.upstream = self
        self.state = _HEAD
        self._buf = b""
        self.head_sent = False
        self.status = 0
        self.bytes_out = 0
        self.close_client = not keep_alive
        self._head_request = req.method == b"HEAD"
        self._client_keep_alive = keep_alive
        self.read_timeout = read_timeout
        # Until the response head arrives the clock is the first-byte timeout
        # (a cold model load can take minutes); after it, the gap between reads.
        self.first_byte_timeout = read_timeout if first_byte_timeout is None else first_byte_timeout
        self._extra_headers = extra_headers
        self._tail0 = self._tail1 = self._tail2 = None
        # Only generations keep references to their last reads (for token counts),
        # so a bulk response never holds more than the transport's own buffer.
        self._keep_tail = keep_tail
        self.result = self.loop.create_future()
        self.last_read = self.loop.time()
        self._timer = self.loop.call_at(self.last_read + self.first_byte_timeout, self._check_timeout)
        if client.write_paused:
            self.pause_for_client()
        return self.result

    def _detach(self) -> None:
        self.state = _IDLE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.client is not None:
            self.client.upstream = None
        self.client = None
        self._client_transport = None
        if self._paused_by_client:
            self._paused_by_client = False
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()

    def _finish(self, reusable: bool) -> None:
        self._detach()
        fut = self.result
        if fut is not None and not fut.done():
            fut.set_result(reusable and self._keep_alive and not self.closed)

    def fail(self, err: BaseException) -> None:
        """End the current exchange with an error; the connection is not reused."""
        if self.state == _IDLE:
            return
        self._detach()
        if self.transport is not None:
            self.transport.abort()
        fut = self.result
        if fut is not None and not fut.done():
            fut.set_exception(err)

    def client_lost(self) -> None:
        # Closing at once is what stops the generation: Ollama cancels a
        # request when its connection closes.
        self.fail(ClientGone())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.state == _BODY and isinstance(self._framing, CloseFraming):
            self._finish(False)  # the close is the end of a close-delimited body
        elif self.state != _IDLE:
            self.fail(UpstreamGone())
        else:
            self._on_idle_close(self)

    # --- flow control ----------------------------------------------------------

    def pause_for_client(self) -> None:
        if not self._paused_by_client and not self.closed and self.transport is not None:
            self._paused_by_client = True
            self.transport.pause_reading()

    def resume_for_client(self) -> None:
        if self._paused_by_client:
            self._paused_by_client = False
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamGone()
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None
            if self.closed:
                raise UpstreamGone()

    # --- the response ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state == _BODY:
            # The token path: one scan, one write, no allocation.
            self.last_read = self.loop.time()
            try:
                end = self._framing.feed(data)
            except FramingError:
                self.fail(UpstreamGone("upstream sent a malformed body"))
                return
            if end < 0:
                self._client_transport.write(data)  # type: ignore[union-attr]
                self.bytes_out += len(data)
                if self._keep_tail:
                    # A token read is kept by reference; of a large read only its end is
                    # copied, so big buffers are freed (and their pages reused) at once.
                    self._tail2, self._tail1, self._tail0 = (
                        self._tail1, self._tail0, data if len(data) <= TAIL_BYTES else data[-TAIL_BYTES:])
                return
            self._end_of_body(data, end)
        elif self.state == _HEAD:
            self.last_read = self.loop.time()
            self._head_data(data)
        elif self.transport is not None:
            self.transport.abort()  # bytes with no request outstanding: out of sync

    def tail(self) -> tuple[bytes | None, ...]:
        """The last body reads, oldest first (for token counts at the end of a response); then forgets them."""
        tail = (self._tail2, self._tail1, self._tail0)
        self._tail0 = self._tail1 = self._tail2 = None
        return tail

    def _end_of_body(self, data: bytes, end: int) -> None:
        if self._keep_tail:
            self._tail2, self._tail1, self._tail0 = self._tail1, self._tail0, data[max(0, end - TAIL_BYTES):end]
        if end:
            self._client_transport.write(data if end == len(data) else data[:end])  # type: ignore[union-attr]
            self.bytes_out += end
        self._finish(reusable=end == len(data))

    def _head_data(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        idx = buf.find(b"\r\n\r\n")
        if idx < 0:
            if len(buf) > MAX_RESPONSE_HEAD:
                self.fail(BadUpstreamHead("upstream response head too large"))
            else:
                self._buf = buf
            return
        self._buf = b""
        if idx + 4 > MAX_RESPONSE_HEAD:
            self.fail(BadUpstreamHead("upstream response head too large"))
            return
        try:
            rh = parse_response_head(buf[:idx + 4], head_request=self._head_request,
                                     client_keep_alive=self._client_keep_alive, extra=self._extra_headers)
        except GuardError as err:
            self.fail(err)
            return
        rest = buf[idx + 4:]
        if rh.status < 200:
            if rh.status == 101:
                self.fail(BadUpstreamHead("upstream switched protocols"))
            elif rest:
                self._head_data(rest)  # interim response (103, a stray 100): not forwarded
            return
        self.status = rh.status
        self.close_client = rh.close_client
        self._keep_alive = rh.upstream_keep_alive
        if rh.no_body:
            framing: Framing = NoBody()
        elif rh.chunked:
            framing = ChunkedFraming()
        elif rh.content_length is not None:
            framing = LengthFraming(rh.content_length)
        else:
            framing = CloseFraming()
        self._framing = framing
        self.bytes_out = len(rh.head)
        self.head_at = time.perf_counter()
        self.state = _BODY
        if self.read_timeout < self.first_byte_timeout and self._timer is not None:
            # The first-byte clock is done; from now on the gap between reads counts.
            self._timer.cancel()
            self._timer = self.loop.call_at(self.loop.time() + self.read_timeout, self._check_timeout)
        end = 0
        if rest and not framing.done:
            try:
                end = framing.feed(rest)
            except FramingError:
                # Nothing has gone to the client yet: it can still get a 502.
                self.fail(BadUpstreamHead("upstream sent a malformed body"))
                return
        self.head_sent = True
        if self._keep_tail:
            self._tail0 = rest[:end][-TAIL_BYTES:] if end >= 0 else rest[-TAIL_BYTES:]
        if end < 0:
            self._client_transport.write(rh.head + rest)  # type: ignore[union-attr]
            self.bytes_out += len(rest)
            return
        if framing.done:
            self._client_transport.write(rh.head + rest[:end] if end else rh.head)  # type: ignore[union-attr]
            self.bytes_out += end
            self._finish(reusable=end == len(rest))
        else:
            self._client_transport.write(rh.head)  # type: ignore[union-attr]

    def _check_timeout(self) -> None:
        self._timer = None
        if self.state == _IDLE:
            return
        now = self.loop.time()
        limit = self.first_byte_timeout if self.state == _HEAD else self.read_timeout
        if self._paused_by_client:
            # A stalled client is not the upstream's fault: the clock restarts.
            self._timer = self.loop.call_at(now + limit, self._check_timeout)
            return
        deadline = self.last_read + limit
        if now < deadline:
            self._timer = self.loop.call_at(deadline, self._check_timeout)
            return
        self.fail(UpstreamTimeout() if self.state == _BODY else FirstByteTimeout())


def send_buffered_body(client: "ClientConnection", upstream: UpstreamConnection, req: RequestHead) -> int | None:
    """Send a Content-Length body that is already wholly buffered (the usual small JSON
    request), with no task; None when it is not, and send_request_body must copy it."""
    n = req.content_length
    if req.chunked or not n or len(client.buf) < n:
        return None
    upstream.transport.write(bytes(client.buf[:n]))  # type: ignore[union-attr]
    client.consume(n)
    return n


async def send_request_body(client: "ClientConnection", upstream: UpstreamConnection, req: RequestHead,
                            idle_timeout: float, max_body: int) -> int:
    """Copy the request body with backpressure both ways; returns the body bytes read.

    A Content-Length body passes unchanged (its size was checked against
    max_body from the head).  A chunked body is decoded strictly and written
    again in guardproxy's own chunks: extensions and trailers are dropped, so
    the upstream never sees chunk framing guardproxy did not write.  Reads
    only up to the end of the body, so a pipelined next request stays in the
    client's buffer.  Each write restarts the upstream's first-byte clock:
    the upstream cannot answer before it has the body.
    """
    transport = upstream.transport
    assert transport is not None
    loop = upstream.loop
    total = 0
    if not req.chunked:
        framing = LengthFraming(req.content_length or 0)
        while not framing.done:
            data = await client.peek(BODY_READ, idle_timeout)
            end = framing.feed(data)
            if end >= 0:
                data = data[:end]
            client.consume(len(data))
            total += len(data)
            transport.write(data)
            upstream.last_read = loop.time()
            await upstream.drain()
        return total
    decoder = ChunkedDecoder(max_body)
    while not decoder.done:
        data = await client.peek(BODY_READ, idle_timeout)
        try:
            pieces, end = decoder.feed(data)
        except BodyTooLarge:
            raise PayloadTooLarge() from None
        except FramingError as e:
            raise BadRequest(f"malformed chunked body: {e}") from None
        used = len(data) if end < 0 else end
        client.consume(used)
        total += used
        payload = b"".join(pieces)
        if payload:
            transport.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        if decoder.done:
            transport.write(b"0\r\n\r\n")
        upstream.last_read = loop.time()
        await upstream.drain()
    return total
