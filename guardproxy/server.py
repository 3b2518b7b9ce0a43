"""The accept loop and the per-connection pipeline.

    read head (bounded, timed) -> h11 parses it -> health? -> authenticate
    -> [only now] take an upstream connection -> send the rebuilt head and
    the body -> the relay splices the response -> access-log record

Every check happens before an upstream connection is taken, so a refused
request never touches the upstream.  Refusals are GuardErrors rendered in
one place (errors.render).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from .accesslog import AccessLog
from .auth import KeyRing
from .config import Config
from .errors import GuardError, HeadTooLarge, RequestTimeout, render
from .heads import RequestHead, build_upstream_head, parse_request_head
from .relay import (ClientGone, UpstreamConnection, UpstreamGone, send_buffered_body, send_request_body,
                    set_nodelay)
from .upstream import UpstreamPool

MAX_HEAD = 16384
READ_LIMIT = 65536        # client bytes buffered before reading pauses
WRITE_HIGH_WATER = 65536  # client bytes queued before the upstream pauses

_HEALTH_BODY = b"OK"
_HEALTH = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
           b"Cache-Control: no-store\r\n\r\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientConnection(asyncio.Protocol):
    """One client socket: a bounded read buffer, write flow control, and hang-up detection."""

    def __init__(self, server: "GuardServer") -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = bytearray()
        self.closed = False
        self.idle = True
        self.peer_ip = "unknown"
        self.write_paused = False
        self.upstream: UpstreamConnection | None = None
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = peer[0]
        self.server.connections.add(self)
        self.task = self.loop.create_task(self.server.serve(self))

    def data_received(self, data: bytes) -> None:
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
        self.server.connections.discard(self)
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.upstream is not None:
            self.upstream.client_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.pause_for_client()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.resume_for_client()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- reading -----------------------------------------------------------------

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

    async def read_head(self, first_byte_timeout: float, header_timeout: float) -> bytes | None:
        """The next request head, or None when the client closes or idles out between requests."""
        if not self.buf:
            self.idle = True
            try:
                async with asyncio.timeout(first_byte_timeout):
                    while not self.buf and not self.closed:
                        await self._wait_data()
            except TimeoutError:
                return None
            finally:
                self.idle = False
            if not self.buf:
                return None
        idx = self.buf.find(b"\r\n\r\n")
        if idx >= 0:  # the usual case: the whole head came in one read, no timer needed
            head = bytes(self.buf[:idx + 4])
            self.consume(idx + 4)
            return head
        scanned = 0
        try:
            async with asyncio.timeout(header_timeout):
                while True:
                    idx = self.buf.find(b"\r\n\r\n", max(0, scanned - 3))
                    if idx >= 0:
                        head = bytes(self.buf[:idx + 4])
                        self.consume(idx + 4)
                        return head
                    scanned = len(self.buf)
                    if scanned > MAX_HEAD:
                        raise HeadTooLarge()
                    if self.closed:
                        raise ClientGone()
                    await self._wait_data()
        except TimeoutError:
            raise RequestTimeout() from None

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


class GuardServer:
    def __init__(self, config: Config, *, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.keys = KeyRing(config.keys)
        self.pool = UpstreamPool(config.upstream, connect_timeout=config.timeouts.connect)
        self.access_log = access_log if access_log is not None else AccessLog(config.access_log)
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._active = 0
        self._idle_event = asyncio.Event()
        self._idle_event.set()

    async def start(self) -> None:
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), self.config.listen_host, self.config.listen_port,
            backlog=1024, reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let running requests finish within the grace period, then close."""
        grace = self.config.timeouts.grace if grace is None else grace
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.transport.close()
        try:
            async with asyncio.timeout(grace):
                await self._idle_event.wait()
        except TimeoutError:
            pass
        for conn in list(self.connections):
            conn.transport.abort()
        tasks = [c.task for c in list(self.connections) if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
        self.access_log.flush()

    # --- the pipeline -----------------------------------------------------------

    async def serve(self, conn: ClientConnection) -> None:
        t = self.config.timeouts
        first_wait = t.header
        try:
            while not conn.closed and not self.closing:
                head = await conn.read_head(first_wait, t.header)
                if head is None:
                    break
                first_wait = t.keepalive
                self._active += 1
                self._idle_event.clear()
                try:
                    keep = await self.handle(conn, head)
                finally:
                    self._active -= 1
                    if not self._active:
                        self._idle_event.set()
                if not keep:
                    break
                await conn.drain()
        except GuardError as err:
            # A head that never completed: there is no request to log against.
            if not conn.closed:
                conn.transport.write(render(err, close=True))
        except ClientGone:
            pass
        except Exception as exc:  # a bug must cost one connection, never the server
            print(f"guardproxy: internal error: {exc!r}", file=sys.stderr)
        finally:
            if not conn.closed:
                conn.transport.close()

    async def handle(self, conn: ClientConnection, head: bytes) -> bool:
        """Serve one request; True if the connection stays open for the next one."""
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "client": conn.peer_ip, "method": "", "path": "", "status": 0,
            "bytes_in": len(head), "bytes_out": 0, "duration_ms": 0.0, "ttfb_ms": None,
            "key": None, "outcome": "ok",
        }
        req: RequestHead | None = None
        try:
            req = parse_request_head(head)
            entry["method"] = req.method.decode("latin-1")
            entry["path"] = req.path.decode("latin-1")[:1024]
            if req.path == b"/health" and req.method in (b"GET", b"HEAD") and req.target == b"/health":
                return self._health(conn, req, entry, started)
            entry["key"] = self.keys.authenticate(req)
            upstream = await self.pool.acquire()
        except GuardError as err:
            return self._refuse(conn, req, err, entry, started)
        return await self._proxy(conn, req, upstream, entry, started)

    def _health(self, conn: ClientConnection, req: RequestHead, entry: dict[str, Any], started: float) -> bool:
        keep = req.keep_alive and not self.closing
        head = _HEALTH if keep else _HEALTH[:-2] + b"Connection: close\r\n\r\n"
        conn.transport.write(head if req.method == b"HEAD" else head + _HEALTH_BODY)
        entry.update(status=200, bytes_out=len(head) + (0 if req.method == b"HEAD" else 2))
        self._log(entry, started, started)
        return keep

    def _refuse(self, conn: ClientConnection, req: RequestHead | None, err: GuardError,
                entry: dict[str, Any], started: float) -> bool:
        has_body = req is not None and (req.chunked or bool(req.content_length))
        close = err.close or req is None or has_body or not req.keep_alive or self.closing
        response = render(err, close=close, head_only=req is not None and req.method == b"HEAD")
        if not conn.closed:
            conn.transport.write(response)
        entry.update(status=err.status, bytes_out=len(response), outcome="upstream_error" if err.status >= 502 else "refused")
        entry["error"] = err.message
        self._log(entry, started, started)
        return not close

    async def _proxy(self, conn: ClientConnection, req: RequestHead, upstream: UpstreamConnection,
                     entry: dict[str, Any], started: float) -> bool:
        t = self.config.timeouts
        has_body = req.chunked or bool(req.content_length)
        keep_alive = req.keep_alive and not self.closing
        head = build_upstream_head(req, self.pool.authority, conn.peer_ip.encode(), b"http")
        body_task: asyncio.Task[int] | None = None
        for attempt in (0, 1):
            result = upstream.begin(conn, req, keep_alive=keep_alive, read_timeout=t.read)
            if conn.closed:
                upstream.client_lost()
            else:
                upstream.transport.write(head)  # type: ignore[union-attr]
                if has_body:
                    if req.expect_continue and req.http_version == b"1.1":
                        conn.transport.write(_CONTINUE)
                    sent = send_buffered_body(conn, upstream, req)
                    if sent is not None:
                        entry["bytes_in"] += sent
                    else:
                        body_task = self.loop.create_task(send_request_body(conn, upstream, req, t.header))
                        body_task.add_done_callback(lambda task, up=upstream: _body_done(task, up))
            try:
                reusable = await result
                break
            except UpstreamGone as err:
                # A pooled connection the upstream had just closed: retry once on
                # a fresh one when no body was consumed, as nginx does.
                if attempt or not upstream.reused or has_body or upstream.head_sent:
                    return self._upstream_failed(conn, req, upstream, err, entry, started)
                try:
                    upstream = await self.pool.acquire(fresh=True)
                except GuardError as err2:
                    return self._refuse(conn, req, err2, entry, started)
            except ClientGone:
                entry.update(status=499, outcome="client_gone", bytes_out=upstream.bytes_out)
                self._log(entry, started, upstream.head_at or None)
                return False
            except GuardError as err:
                return self._upstream_failed(conn, req, upstream, err, entry, started)
        body_complete = body_task is None or (body_task.done() and not body_task.cancelled()
                                              and body_task.exception() is None)
        if body_task is not None:
            if body_complete:
                entry["bytes_in"] += body_task.result()
            else:
                body_task.cancel()
        if reusable and body_complete:
            self.pool.release(upstream)
        else:
            upstream.close()
        entry.update(status=upstream.status, bytes_out=upstream.bytes_out)
        self._log(entry, started, upstream.head_at)
        return keep_alive and body_complete and not upstream.close_client

    def _upstream_failed(self, conn: ClientConnection, req: RequestHead, upstream: UpstreamConnection,
                         err: GuardError, entry: dict[str, Any], started: float) -> bool:
        if not upstream.head_sent:
            return self._refuse(conn, req, err, entry, started)
        # The response has started: never write an error into it.  Closing
        # without a terminating chunk shows the client a truncated body.
        entry.update(status=upstream.status, outcome="upstream_error", bytes_out=upstream.bytes_out)
        entry["error"] = err.message
        self._log(entry, started, upstream.head_at)
        return False

    def _log(self, entry: dict[str, Any], started: float, first_byte: float | None) -> None:
        if not self.access_log.enabled:
            return
        now = time.perf_counter()
        entry["duration_ms"] = round((now - started) * 1000, 3)
        if first_byte:
            entry["ttfb_ms"] = round((first_byte - started) * 1000, 3)
        self.access_log.record(entry)


def _body_done(task: "asyncio.Task[int]", upstream: UpstreamConnection) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None or isinstance(exc, ClientGone):
        return  # a client hang-up reaches the upstream through connection_lost
    upstream.fail(exc if isinstance(exc, GuardError) else UpstreamGone())
