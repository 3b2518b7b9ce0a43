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
from dataclasses import replace
from typing import Any

from . import bodies as admission

from ..decisions import routes as policy
from .accesslog import AccessLog
from ..decisions.auth import KeyRing
from ..decisions.policy import Policies
from ..config.load import Config, KeyEntry
from ..decisions.cors import header_bytes, is_preflight
from ..wire.errors import BadGateway, GuardError, RequestTimeout, ServiceUnavailable, Unauthorized, render, response_head
from ..wire.heads import CONTINUE, RequestHead, build_upstream_head, parse_request_head
from ..decisions.limits import address_bucket
from .relay import (ClientGone, UpstreamConnection, UpstreamGone, send_buffered_body, send_request_body,
                    set_nodelay)
from ..wire.strict import HeadScanner
from .tls import CertReloader
from .pool import UpstreamPool
from ..ops.usage import join_tail, usage_from_tail

READ_LIMIT = 65536        # client bytes buffered before reading pauses
WRITE_HIGH_WATER = 65536  # client bytes queued before the upstream pauses
LINGER = 2.0              # seconds a refused connection is drained before it closes

_HEALTH_BODY = b"OK"
_HEALTH = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
           b"Cache-Control: no-store\r\n\r\n")


class ClientConnection(asyncio.Protocol):
    """One client socket: a bounded read buffer, write flow control, and hang-up detection."""

    __slots__ = ("server", "loop", "transport", "buf", "closed", "idle", "peer_ip", "address_key", "counted",
                 "write_paused", "upstream", "linger", "_write_timer", "_linger_timer", "_reading_paused",
                 "_waiter", "_drain_waiter", "task")

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
        self.counted = False  # holds a place in the per-address count
        self.address_key = ""  # what the per-address cap counts (see limits.address_bucket)
        self.linger = False   # close after a refusal: read and discard before closing
        self._write_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
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
        refusal = self.server.admit(self)
        if refusal is not None:
            # Over a connection cap: one short answer, no task, no buffers.
            self.closed = True
            response = render(refusal, close=True)
            transport.write(response)  # type: ignore[attr-defined]
            transport.close()
            self.server.log_refusal(self, refusal, len(response))
            return
        self.task = self.loop.create_task(self.server.serve(self))

    def data_received(self, data: bytes) -> None:
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
        self._write_timer = self.loop.call_later(self.server.config.timeouts.write, self._write_stalled)
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


class GuardServer:
    def __init__(self, config: Config, *, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.keys = KeyRing(config.keys)
        self.policies = Policies(config)
        self.clock = time.monotonic  # rate and ban decisions; tests put a fake clock here
        self.pool = UpstreamPool(config.upstream, connect_timeout=config.timeouts.connect)
        self.access_log = access_log if access_log is not None else AccessLog(config.access_log)
        self.connections: set[ClientConnection] = set()
        self.per_ip: dict[str, int] = {}
        self.tls = CertReloader(config.tls) if config.tls is not None else None
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._active = 0
        self._idle_event = asyncio.Event()
        self._idle_event.set()

    def apply_config(self, config: Config) -> None:
        """Take a reloaded config: keys, CORS, limits, timeouts.  Running streams keep going.

        The listen address and the upstream stay as they are (they need a restart).
        """
        config = replace(config, listen_host=self.config.listen_host, listen_port=self.config.listen_port,
                         upstream=self.config.upstream, access_log=self.config.access_log)
        self.keys = KeyRing(config.keys)
        admission.wake(self.policies.apply(config))
        self.config = config
        if self.tls is not None:
            # A reload (certbot's deploy hook sending SIGHUP, say) takes renewed
            # certificate files at once instead of at the next periodic look.
            self.tls.reload_if_changed()

    async def start(self) -> None:
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), self.config.listen_host, self.config.listen_port,
            backlog=1024, reuse_address=True,
            ssl=self.tls.context if self.tls is not None else None,
            # A client that opens a connection and never finishes the handshake
            # gets the same deadline as one that never finishes its head.
            ssl_handshake_timeout=self.config.timeouts.header if self.tls is not None else None)
        if self.tls is not None:
            self.tls.start(self.loop)

    def admit(self, conn: ClientConnection) -> GuardError | None:
        """Count a new connection, or say which cap it is over."""
        limits = self.config.server
        if len(self.connections) >= limits.max_connections:
            return ServiceUnavailable("too many connections")
        key = conn.address_key = address_bucket(conn.peer_ip)
        n = self.per_ip.get(key, 0)
        if n >= limits.max_connections_per_ip:
            return ServiceUnavailable("too many connections from your address")
        self.per_ip[key] = n + 1
        conn.counted = True
        self.connections.add(conn)
        return None

    def release(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if conn.counted:
            conn.counted = False
            n = self.per_ip.get(conn.address_key, 1) - 1
            if n > 0:
                self.per_ip[conn.address_key] = n
            else:
                self.per_ip.pop(conn.address_key, None)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let running requests finish within the grace period, then close."""
        grace = self.config.timeouts.grace if grace is None else grace
        self.closing = True
        if self.tls is not None:
            self.tls.stop()
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
                head = await conn.read_head(first_wait, t.header, self.config.server.max_headers)
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
            # A head that never completed (too big, bare LF, too slow): the
            # refusal is still answered and logged, without a method or path.
            conn.linger = True
            response = render(err, close=True)
            if not conn.closed:
                conn.transport.write(response)
            self.log_refusal(conn, err, len(response))
        except ClientGone:
            pass
        except Exception as exc:  # a bug must cost one connection, never the server
            print(f"guardproxy: internal error: {exc!r}", file=sys.stderr)
        finally:
            if conn.linger:
                conn.close_lingering()
            elif not conn.closed:
                conn.transport.close()

    async def handle(self, conn: ClientConnection, head: bytes) -> bool:
        """Serve one request; True if the connection stays open for the next one."""
        started = time.perf_counter()
        entry = _new_entry(conn.peer_ip, len(head))
        req: RequestHead | None = None
        pol = self.policies
        cors: list[tuple[str, str]] = []
        slot: str | None = None
        try:
            req = parse_request_head(head, max_headers=self.config.server.max_headers,
                                     max_body=self.config.server.max_body)
            entry["method"] = req.method.decode("latin-1")
            entry["path"] = req.path.decode("latin-1")[:1024]
            if req.path == b"/health" and req.method in (b"GET", b"HEAD") and req.target == b"/health":
                return self._health(conn, req, entry, started)
            origin = req.get(b"origin")
            if origin is not None:
                if is_preflight(req):
                    return self._preflight(conn, req, entry, started)
                cors = pol.cors.response_headers(origin)
            # "*" reaches here only as OPTIONS * (the head check refuses it otherwise).
            path = req.target if req.target == b"*" else policy.check_path(req.target)
            now = self.clock()
            client = entry["client"] = pol.client_address(conn.peer_ip, req)
            pol.before_auth(client, now)
            try:
                key = self.keys.identify(req)
            except Unauthorized:
                pol.auth_failed(client, now)
                raise
            entry["key"] = key.name
            pol.after_auth(key, now)
            policy.check_endpoint(key, path, req.method)
            body = None
            if key.models is not None and path in policy.MODEL_PATHS:
                body = await admission.read_small_body(conn, req, policy.MAX_MODEL_BODY, self.config.timeouts.body)
                entry["bytes_in"] += len(body)
                entry["model"] = policy.check_models(key, body)
                req = admission.with_body(req, body)
            if pol.slots_on and path in policy.GENERATION_PATHS:
                await admission.acquire_slot(pol.gate, key.name, key.max_concurrent, pol.queue_timeout)
                slot = key.name
            if key.models is not None and path in policy.LISTING_PATHS and req.method == b"GET":
                return await self._filtered(conn, req, key, path, cors, entry, started)
            upstream = await self.pool.acquire()
        except GuardError as err:
            if req is None:  # refused while parsing: log what the request line claimed
                parts = head.split(b"\r\n", 1)[0].split(b" ")
                entry["method"] = parts[0][:16].decode("latin-1")
                if len(parts) > 1:
                    entry["path"] = parts[1].split(b"?", 1)[0][:1024].decode("latin-1")
            if slot is not None:
                admission.wake(pol.gate.release(slot))
            return self._refuse(conn, req, err, entry, started, cors)
        except BaseException:
            if slot is not None:
                admission.wake(pol.gate.release(slot))
            raise
        try:
            return await self._proxy(conn, req, upstream, entry, started, body=body, cors=cors,
                                     usage=path in policy.GENERATION_PATHS)
        finally:
            # A generation holds its slot until its stream has ended, however it ended.
            if slot is not None:
                admission.wake(pol.gate.release(slot))

    def _preflight(self, conn: ClientConnection, req: RequestHead, entry: dict[str, Any], started: float) -> bool:
        """A CORS preflight: answered here, no key needed, never forwarded."""
        has_body = req.chunked or bool(req.content_length)
        keep = req.keep_alive and not self.closing and not has_body
        head = response_head(204, self.policies.cors.preflight_headers(req), close=not keep)
        if not conn.closed:
            conn.transport.write(head)
        entry.update(status=204, bytes_out=len(head))
        self._log(entry, started, started)
        return keep

    async def _filtered(self, conn: ClientConnection, req: RequestHead, key: KeyEntry, path: bytes,
                        cors: list[tuple[str, str]], entry: dict[str, Any], started: float) -> bool:
        """A model list, fetched whole (it is small) and cut down to the key's models."""
        t = self.config.timeouts
        up = self.config.upstream
        status, head, body = await admission.fetch_whole(
            up.host, up.port, self.pool.authority, req, entry["client"].encode(),
            header_bytes(cors) if cors else b"", t.connect, t.read)
        if status == 200:
            try:
                body = policy.filter_listing(path, key, body)
            except (ValueError, AttributeError, TypeError):
                return self._refuse(conn, req, BadGateway("upstream sent an unreadable model list"),
                                    entry, started, cors)
        keep = req.keep_alive and not self.closing
        out = head + b"Content-Length: %d\r\n" % len(body) + (b"" if keep else b"Connection: close\r\n") + b"\r\n"
        if not conn.closed:
            conn.transport.write(out + body)
        entry.update(status=status, bytes_out=len(out) + len(body), ttfb_ms=None)
        self._log(entry, started, time.perf_counter())
        return keep

    def _health(self, conn: ClientConnection, req: RequestHead, entry: dict[str, Any], started: float) -> bool:
        keep = req.keep_alive and not self.closing
        head = _HEALTH if keep else _HEALTH[:-2] + b"Connection: close\r\n\r\n"
        conn.transport.write(head if req.method == b"HEAD" else head + _HEALTH_BODY)
        entry.update(status=200, bytes_out=len(head) + (0 if req.method == b"HEAD" else 2))
        self._log(entry, started, started)
        return keep

    def _refuse(self, conn: ClientConnection, req: RequestHead | None, err: GuardError,
                entry: dict[str, Any], started: float, cors: list[tuple[str, str]] | None = None) -> bool:
        has_body = req is not None and (req.chunked or bool(req.content_length))
        close = err.close or req is None or has_body or not req.keep_alive or self.closing
        response = render(err, close=close, head_only=req is not None and req.method == b"HEAD",
                          extra_headers=cors or ())
        conn.linger = close
        if not conn.closed:
            conn.transport.write(response)
        entry.update(status=err.status, bytes_out=len(response), outcome="upstream_error" if err.status in (502, 504) else "refused")
        entry["error"] = err.message
        self._log(entry, started, started)
        return not close

    async def _proxy(self, conn: ClientConnection, req: RequestHead, upstream: UpstreamConnection,
                     entry: dict[str, Any], started: float, *, body: bytes | None = None,
                     cors: list[tuple[str, str]] | None = None, usage: bool = False) -> bool:
        t = self.config.timeouts
        extra = header_bytes(cors) if cors else b""
        has_body = body is None and (req.chunked or bool(req.content_length))
        keep_alive = req.keep_alive and not self.closing
        head = build_upstream_head(req, self.pool.authority, entry["client"].encode(),
                                   b"https" if self.tls is not None else b"http")
        if body:
            head += body  # read already (to check its model): forwarded exactly, with its length
        body_task: asyncio.Task[int] | None = None
        for attempt in (0, 1):
            result = upstream.begin(conn, req, keep_alive=keep_alive, read_timeout=t.read,
                                    first_byte_timeout=t.first_byte, extra_headers=extra,
                                    keep_tail=usage)
            if conn.closed:
                upstream.client_lost()
            else:
                upstream.transport.write(head)  # type: ignore[union-attr]
                if has_body:
                    if req.expect_continue and req.http_version == b"1.1":
                        conn.transport.write(CONTINUE)
                    sent = send_buffered_body(conn, upstream, req)
                    if sent is not None:
                        entry["bytes_in"] += sent
                    else:
                        body_task = self.loop.create_task(send_request_body(conn, upstream, req, t.body,
                                                                                 self.config.server.max_body))
                        body_task.add_done_callback(lambda task, up=upstream: _body_done(task, up))
            try:
                reusable = await result
                break
            except UpstreamGone as err:
                # A pooled connection the upstream had just closed: retry once on
                # a fresh one when no body was consumed, as nginx does.
                if attempt or not upstream.reused or has_body or upstream.head_sent:
                    return self._upstream_failed(conn, req, upstream, err, entry, started, cors)
                try:
                    upstream = await self.pool.acquire(fresh=True)
                except GuardError as err2:
                    return self._refuse(conn, req, err2, entry, started, cors)
            except ClientGone:
                entry.update(status=499, outcome="client_gone", bytes_out=upstream.bytes_out)
                if usage:
                    entry.update(usage_from_tail(join_tail(upstream.tail())))
                self._log(entry, started, upstream.head_at or None)
                return False
            except GuardError as err:
                return self._upstream_failed(conn, req, upstream, err, entry, started, cors)
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
        if usage:
            entry.update(usage_from_tail(join_tail(upstream.tail())))
        self._log(entry, started, upstream.head_at)
        return keep_alive and body_complete and not upstream.close_client

    def _upstream_failed(self, conn: ClientConnection, req: RequestHead, upstream: UpstreamConnection,
                         err: GuardError, entry: dict[str, Any], started: float,
                         cors: list[tuple[str, str]] | None) -> bool:
        if not upstream.head_sent:
            return self._refuse(conn, req, err, entry, started, cors)
        # The response has started: never write an error into it.  Closing
        # without a terminating chunk shows the client a truncated body.
        entry.update(status=upstream.status, outcome="upstream_error", bytes_out=upstream.bytes_out)
        entry["error"] = err.message
        self._log(entry, started, upstream.head_at)
        return False

    def log_refusal(self, conn: ClientConnection, err: GuardError, bytes_out: int) -> None:
        """A refusal with no parsed request behind it (incomplete head, connection cap)."""
        now = time.perf_counter()
        entry = _new_entry(conn.peer_ip, len(conn.buf))
        entry.update(status=err.status, bytes_out=bytes_out, outcome="refused", error=err.message)
        self._log(entry, now, now)

    def _log(self, entry: dict[str, Any], started: float, first_byte: float | None) -> None:
        if not self.access_log.enabled:
            return
        now = time.perf_counter()
        entry["duration_ms"] = round((now - started) * 1000, 3)
        if first_byte:
            entry["ttfb_ms"] = round((first_byte - started) * 1000, 3)
        self.access_log.record(entry)


def _new_entry(client: str, bytes_in: int) -> dict[str, Any]:
    """An access-log record with every field present, filled in as the request goes."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "client": client,
            "method": "", "path": "", "status": 0, "bytes_in": bytes_in, "bytes_out": 0,
            "duration_ms": 0.0, "ttfb_ms": None, "key": None, "outcome": "ok"}


def _body_done(task: "asyncio.Task[int]", upstream: UpstreamConnection) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None or isinstance(exc, ClientGone):
        return  # a client hang-up reaches the upstream through connection_lost
    upstream.fail(exc if isinstance(exc, GuardError) else UpstreamGone())
