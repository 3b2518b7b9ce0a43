"""One client socket: a bounded read buffer, write flow control, hang-up detection, lingering close.

The connection knows its owner (the server) and whatever is attached to it
for the current request (the relay) only through the two small interfaces
below, so neither of them is imported here.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, Protocol, cast

from ..wire.errors import GuardError, RequestTimeout, render
from ..wire.strict import HeadScanner
from .failures import ClientGone
from .relay import set_nodelay

READ_LIMIT = 65536        # client bytes buffered before reading pauses
WRITE_HIGH_WATER = 65536  # client bytes queued before the upstream pauses
LINGER = 2.0              # seconds a refused connection is drained before it closes


class Owner(Protocol):
    """What a connection needs from the server that accepted it."""

    loop: asyncio.AbstractEventLoop

    @property
    def write_timeout(self) -> float: ...
    def admit(self, conn: "ClientConnection") -> GuardError | None: ...
    def release(self, conn: "ClientConnection") -> None: ...
    def serve(self, conn: "ClientConnection") -> Coroutine[Any, Any, None]: ...
    def log_refusal(self, conn: "ClientConnection", err: GuardError, bytes_out: int) -> None: ...


class FlowListener(Protocol):
    """Whoever streams to this client right now (the relay) and must hear about it."""

    def client_lost(self) -> None: ...
    def pause_for_client(self) -> None: ...
    def resume_for_client(self) -> None: ...


class ClientConnection(asyncio.Protocol):
    """One client socket: a bounded read buffer, write flow control, and hang-up detection."""

    __slots__ = ("server", "loop", "transport", "buf", "closed", "idle", "peer_ip", "address_key", "counted",
                 "write_paused", "upstream", "linger", "_write_timer", "_linger_timer", "_reading_paused",
                 "_waiter", "_drain_waiter", "task", "_lost", "_expired")

    def __init__(self, server: Owner) -> None:
        self.server = server
        self.loop = server.loop
        # Set in connection_made, which the loop calls before anything else here runs.
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.buf = bytearray()
        self.closed = False
        # Waiting for the first byte of a next request head: such a connection
        # may be closed at once at shutdown.  (UpstreamConnection's IDLE state, response.py,
        # is another thing: an upstream connection with no exchange attached.)
        self.idle = True
        self.peer_ip = "unknown"
        self.write_paused = False
        self.upstream: FlowListener | None = None  # the relay, attached by the exchange while it streams
        self.counted = False  # holds a place in the per-address count
        self.address_key = ""  # what the per-address cap counts (see limits.address_bucket)
        self.linger = False   # close after a refusal: read and discard before closing
        self._write_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._expired = False  # the wait for a next request head ran out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = peer[0]
        # A TLS connection was counted at accept, before its handshake (see server.py).
        refusal = None if self.counted else self.server.admit(self)
        if refusal is not None:
            # Over a connection cap: one short answer, no task, no buffers.
            self.closed = True
            response = render(refusal, close=True)
            self.transport.write(response)
            transport.close()
            self.server.log_refusal(self, refusal, len(response))
            return
        self.task = self.loop.create_task(self.server.serve(self))

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        # Any bytes-like chunk (a bytearray from Windows' proactor loop): it is copied
        # into self.buf at once, so a buffer the loop reuses afterwards is never kept.
        if self.linger and self._linger_timer is not None:
            return  # lingering close: the refusal is out, the rest is discarded
        self.buf += data
        if len(self.buf) > READ_LIMIT and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        # A client that half-closes is treated as gone, like nginx does;
        # returning False lets the transport close and connection_lost run.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.release(self)
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(None)
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.upstream is not None:
            self.upstream.client_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        # A client that stops reading holds an upstream stream (and a GPU) open;
        # past the write timeout it is dropped, which closes the upstream too.
        if self._write_timer is not None:
            self._write_timer.cancel()
        self._write_timer = self.loop.call_later(self.server.write_timeout, self._write_stalled)
        if self.upstream is not None:
            self.upstream.pause_for_client()

    def close_lingering(self) -> None:
        """Close after a refusal without losing the refusal.

        Closing a socket with unread bytes in its receive queue sends a TCP
        reset, and a reset can make the client discard the error response
        it has not read yet.  So, like nginx's lingering_close: send FIN
        after the response, discard what still arrives, and close when the
        client does or after LINGER seconds.
        """
        if self.closed:
            return
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        self.buf.clear()
        transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER, transport.abort)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _write_stalled(self) -> None:
        self._write_timer = None
        if not self.closed:
            self.transport.abort()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self.upstream is not None:
            self.upstream.resume_for_client()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- reading -----------------------------------------------------------------

    def _idle_expired(self) -> None:
        self._expired = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_data(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def consume(self, n: int) -> None:
        del self.buf[:n]
        if self._reading_paused and len(self.buf) <= READ_LIMIT:
            self._reading_paused = False
            if not self.closed:
                self.transport.resume_reading()

    async def read_head(self, first_byte_timeout: float, header_timeout: float,
                        max_headers: int) -> bytes | None:
        """The next request head, or None when the client closes or idles out between requests.

        The head deadline runs from the head's first byte.  HeadScanner
        refuses a bare LF, an over-long line, too many fields or too many
        bytes as soon as they arrive, so no head is held until the deadline.
        """
        if not self.buf:
            # Between requests: a plain timer that wakes the waiter, not asyncio.timeout,
            # whose task cancellation costs more than the wait itself on a busy keep-alive.
            self.idle = True
            self._expired = False
            timer = self.loop.call_later(first_byte_timeout, self._idle_expired)
            try:
                while not self.buf and not self.closed and not self._expired:
                    await self._wait_data()
            finally:
                timer.cancel()
                self.idle = False
            if not self.buf:
                return None
        # A head already buffered (it came with the connection, or pipelined) ends the idle
        # state too: a stop closes idle connections at once, and this one has a request.
        self.idle = False
        scanner = HeadScanner(max_headers)
        end = scanner.feed(self.buf)
        if end < 0:  # the usual case, a whole head in one read, needs no timer
            try:
                async with asyncio.timeout(header_timeout):
                    while end < 0:
                        if self.closed:
                            raise ClientGone()
                        await self._wait_data()
                        end = scanner.feed(self.buf)
            except TimeoutError:
                raise RequestTimeout() from None
        head = bytes(self.buf[scanner.start:end])
        self.consume(end)
        return head

    async def peek(self, limit: int, timeout: float) -> bytes:
        """Up to limit buffered bytes without consuming them; waits for at least one."""
        if not self.buf:
            try:
                async with asyncio.timeout(timeout):
                    while not self.buf:
                        if self.closed:
                            raise ClientGone()
                        await self._wait_data()
            except TimeoutError:
                raise RequestTimeout("request body timeout") from None
        return bytes(self.buf[:limit])

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def take(self, n: int) -> bytes:
        """The first n buffered bytes, consumed (they must be buffered already)."""
        data = bytes(self.buf[:n])
        self.consume(n)
        return data

    def send(self, data: bytes) -> None:
        """Write guardproxy's own bytes (an answer, a refusal); nothing once the client is gone."""
        if not self.closed:
            self.transport.write(data)

    def lost(self) -> "asyncio.Future[None]":
        """A future that is done once the client has gone (to stop waiting on its behalf)."""
        if self._lost is None:
            self._lost = self.loop.create_future()
            if self.closed:
                self._lost.set_result(None)
        return self._lost
