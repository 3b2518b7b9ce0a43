"""One request, from its head to its access-log record.

    parse (strict check, h11) -> /health? -> CORS preflight? -> path shape
    -> ban, per-address rate -> key -> per-key rate -> endpoint rules
    -> model check (reads a small body) -> generation slot
    -> [only now] an upstream connection -> head and body upstream
    -> the relay splices the response -> the record is written

An Exchange carries everything about its request (the connection, the
parsed head, the record, the CORS headers), the way uvicorn's
RequestResponseCycle does, so the steps are methods and not functions with
six loose parameters.  Every check runs before an upstream connection is
taken, so a refused request never touches the upstream.  Any GuardError
raised before the response has started becomes a response in `refuse`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol

from ..config.model import Config, KeyEntry
from ..decisions import routes
from ..decisions.auth import KeyRing
from ..decisions.cors import header_bytes, is_preflight
from ..decisions.policy import Policies
from ..wire.errors import BadGateway, GuardError, Unauthorized, render, response_head
from ..wire.framing import dechunk
from ..wire.heads import CONTINUE, RequestHead, build_upstream_head, parse_request_head
from . import bodies, slots
from .accesslog import AccessLog, LogRecord
from .client import ClientConnection
from .failures import ClientGone, UpstreamGone
from .pool import UpstreamPool
from .relay import MAX_RESPONSE_HEAD, Collector, Sink, UpstreamConnection
from .tokens import join_tail, usage_from_tail

MAX_LISTING = 8 * 1024 * 1024  # a /api/tags answer is a few KiB; this is a generous cap
_HEALTH_BODY = b"OK"
_HEALTH = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
           b"Cache-Control: no-store\r\n\r\n")


class Gate(Protocol):
    """What an exchange reads from the server that runs it (the server's state, not the server)."""

    config: Config
    keys: KeyRing
    policies: Policies
    pool: UpstreamPool
    access_log: AccessLog
    clock: Callable[[], float]
    closing: bool

    @property
    def scheme(self) -> bytes: ...


class Exchange:
    __slots__ = ("server", "conn", "head", "req", "record", "started", "cors", "_upstream")

    def __init__(self, server: Gate, conn: ClientConnection, head: bytes) -> None:
        self.server = server
        self.conn = conn
        self.head = head
        self.req: RequestHead | None = None
        self.record = LogRecord.new(conn.peer_ip, len(head))
        self.started = time.perf_counter()
        self.cors: list[tuple[str, str]] = []  # CORS headers for every answer to this request
        self._upstream: UpstreamConnection | None = None  # the connection of the last upstream call

    # --- derived facts ---------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        """The connection stays open after this request (decided now: a shutdown may start mid-stream)."""
        return self.req is not None and self.req.keep_alive and not self.server.closing

    @property
    def has_body(self) -> bool:
        return self.req is not None and (self.req.chunked or bool(self.req.content_length))

    @property
    def wants_continue(self) -> bool:
        return self.req is not None and self.req.expect_continue and self.req.http_version == b"1.1"

    # --- the pipeline ------------------------------------------------------------

    async def run(self) -> bool:
        """Serve the request; True if the connection stays open for the next one."""
        try:
            return await self._checked()
        except GuardError as err:
            return self.refuse(err)

    async def _checked(self) -> bool:
        server, conn, record = self.server, self.conn, self.record
        limits = server.config.server
        self.req = req = parse_request_head(self.head, max_headers=limits.max_headers, max_body=limits.max_body)
        record.method = req.method.decode("latin-1")
        record.path = req.path.decode("latin-1")[:1024]
        if req.path == b"/health" and req.method in (b"GET", b"HEAD") and req.target == b"/health":
            return self.health()
        pol = server.policies
        origin = req.get(b"origin")
        if origin is not None:
            if is_preflight(req):
                return self.preflight()
            self.cors = pol.cors.response_headers(origin)
        # "*" reaches here only as OPTIONS * (the head check refuses it otherwise).
        path = req.target if req.target == b"*" else routes.check_path(req.target)
        now = server.clock()
        client = record.client = pol.client_address(conn.peer_ip, req)
        pol.before_auth(client, now)
        try:
            key = server.keys.identify(req)
        except Unauthorized:
            pol.auth_failed(client, now)
            raise
        record.key = key.name
        pol.after_auth(key, now)
        routes.check_endpoint(key, path, req.method)
        body = None
        if key.models is not None and path in routes.MODEL_PATHS:
            if self.wants_continue:
                conn.send(CONTINUE)
            reader = bodies.RequestBody(conn, req, idle_timeout=server.config.timeouts.body,
                                        limit=routes.MAX_MODEL_BODY)
            body = await bodies.read_whole(reader)
            record.bytes_in += len(body)
            record.model = routes.check_models(key, body)
            self.req = req = req.with_length(len(body))
        generation = path in routes.GENERATION_PATHS
        if pol.slots_on and generation:
            async with slots.hold(pol.gate, key.name, key.max_concurrent, pol.queue_timeout):
                return await self.proxy(body, usage=True)
        if key.models is not None and path in routes.LISTING_PATHS and req.method == b"GET":
            return await self.filtered_listing(key, path)
        return await self.proxy(body, usage=generation)

    # --- answers guardproxy gives itself --------------------------------------------

    def health(self) -> bool:
        keep = self.keep_alive
        head = _HEALTH if keep else _HEALTH[:-2] + b"Connection: close\r\n\r\n"
        body = b"" if self.req is not None and self.req.method == b"HEAD" else _HEALTH_BODY
        self.conn.send(head + body)
        self.record.status, self.record.bytes_out = 200, len(head) + len(body)
        self.finish(self.started)
        return keep

    def preflight(self) -> bool:
        """A CORS preflight: answered here, no key needed, never forwarded."""
        assert self.req is not None
        keep = self.keep_alive and not self.has_body
        head = response_head(204, self.server.policies.cors.preflight_headers(self.req), close=not keep)
        self.conn.send(head)
        self.record.status, self.record.bytes_out = 204, len(head)
        self.finish(self.started)
        return keep

    def respond(self, status: int, head: bytes, body: bytes) -> bool:
        """A whole answer guardproxy built (a filtered listing): `head` lacks only its framing."""
        keep = self.keep_alive
        out = head + b"Content-Length: %d\r\n" % len(body) + (b"" if keep else b"Connection: close\r\n") + b"\r\n"
        self.conn.send(out + body)
        self.record.status, self.record.bytes_out = status, len(out) + len(body)
        self.finish(self.started)
        return keep

    def refuse(self, err: GuardError) -> bool:
        """A GuardError as a response (nothing of a response has been sent yet)."""
        req, record = self.req, self.record
        if req is None:  # refused while parsing: log what the request line claimed
            parts = self.head.split(b"\r\n", 1)[0].split(b" ")
            record.method = parts[0][:16].decode("latin-1")
            if len(parts) > 1:
                record.path = parts[1].split(b"?", 1)[0][:1024].decode("latin-1")
        # Unread body bytes must never be parsed as a next request: close.
        close = err.close or req is None or self.has_body or not self.keep_alive
        response = render(err, close=close, head_only=req is not None and req.method == b"HEAD",
                          extra_headers=self.cors)
        self.conn.linger = close
        self.conn.send(response)
        record.status, record.bytes_out = err.status, len(response)
        record.outcome = "upstream_error" if err.status in (502, 504) else "refused"
        record.error = err.message
        self.finish(self.started)
        return not close

    # --- through the upstream ------------------------------------------------------

    async def proxy(self, body: bytes | None, *, usage: bool) -> bool:
        """Forward the request (its body already read, or streamed now) and splice the response.

        `usage`: a generation, whose token counts are read from the end of its response.
        """
        req = self.req
        assert req is not None
        server = self.server
        head = build_upstream_head(req, server.pool.authority, self.record.client.encode(), server.scheme)
        if body:
            head += body  # read already (to check its model): forwarded exactly, with its length
        keep_alive = self.keep_alive
        streamed = body is None and self.has_body
        body_task: asyncio.Task[int] | None = None
        try:
            upstream, reusable, body_task = await self._relay(
                head, self.conn.transport, keep_alive=keep_alive, extra=self.cors_bytes, keep_tail=usage,
                stream_body=streamed)
        except (ClientGone, GuardError) as exc:
            return self._cut_short(exc, usage)
        body_complete = body_task is None or (body_task.done() and not body_task.cancelled()
                                              and body_task.exception() is None)
        if body_task is not None:
            if body_complete:
                self.record.bytes_in += body_task.result()
            else:
                body_task.cancel()
        if reusable and body_complete:
            server.pool.release(upstream)
        else:
            upstream.close()
        self.record.status, self.record.bytes_out = upstream.status, upstream.bytes_out
        if usage:
            self._count_tokens(upstream)
        self.finish(upstream.head_at)
        return keep_alive and body_complete and not upstream.close_client

    def _cut_short(self, exc: Exception, usage: bool) -> bool:
        """The upstream call ended early: the client hung up (499), or it failed (502/504 while
        nothing has reached the client; else the stream is cut)."""
        upstream, record = self._upstream, self.record
        if upstream is None or (isinstance(exc, GuardError) and not upstream.head_sent):
            raise exc  # nothing has reached the client: an error response (502, 504)
        record.bytes_out = upstream.bytes_out
        if isinstance(exc, GuardError):
            # The response has started: never write an error into it.  Closing
            # without a terminating chunk shows the client a truncated body.
            record.status, record.outcome, record.error = upstream.status, "upstream_error", exc.message
        else:
            record.status, record.outcome = 499, "client_gone"
            if usage:
                self._count_tokens(upstream)
        self.finish(upstream.head_at or None)
        return False

    async def filtered_listing(self, key: KeyEntry, path: bytes) -> bool:
        """A model list, fetched whole through the pool (it is small) and cut down to the key's models."""
        req = self.req
        assert req is not None
        server = self.server
        # Identity encoding: the body is read as JSON here.
        head = build_upstream_head(req.without(b"accept-encoding"), server.pool.authority,
                                   self.record.client.encode(), server.scheme)
        collector = Collector(MAX_LISTING + MAX_RESPONSE_HEAD, BadGateway("upstream model list too large"))
        upstream, reusable, _ = await self._relay(head, collector, keep_alive=True, extra=b"", keep_tail=False,
                                                  stream_body=False)
        if reusable:
            server.pool.release(upstream)
        else:
            upstream.close()
        rh = upstream.response
        assert rh is not None
        raw = bytes(collector.data[len(rh.head):])
        if rh.chunked:
            try:
                raw = dechunk(raw, MAX_LISTING)
            except ValueError:
                raise BadGateway("upstream sent a malformed model list") from None
        status = rh.status
        if status == 200:
            try:
                raw = routes.filter_listing(path, key, raw)
            except (ValueError, AttributeError, TypeError):
                raise BadGateway("upstream sent an unreadable model list") from None
        lines = [ln for ln in rh.head[:-4].split(b"\r\n")
                 if not ln.lower().startswith((b"content-length:", b"transfer-encoding:", b"connection:"))]
        return self.respond(status, b"\r\n".join(lines) + b"\r\n" + self.cors_bytes, raw)

    async def _relay(self, head: bytes, sink: Sink, *, keep_alive: bool, extra: bytes, keep_tail: bool,
                     stream_body: bool) -> tuple[UpstreamConnection, bool, "asyncio.Task[int] | None"]:
        """Send `head` (and stream the body) upstream; the response goes to `sink` until it ends.

        Returns the connection, whether it may be pooled again, and the task
        still sending the body, if one had to.  A pooled connection the upstream
        had just closed is retried once on a fresh one when nothing of the body
        was consumed, as nginx does.  Raises ClientGone or a GuardError, with
        the connection in `self._upstream`.
        """
        server, conn, req = self.server, self.conn, self.req
        assert req is not None
        timeouts = server.config.timeouts
        upstream = self._upstream = await server.pool.acquire()
        body_task: asyncio.Task[int] | None = None
        for attempt in (0, 1):
            result = upstream.begin(sink, head_request=req.method == b"HEAD", keep_alive=keep_alive,
                                    read_timeout=timeouts.read, first_byte_timeout=timeouts.first_byte,
                                    extra_headers=extra, keep_tail=keep_tail, paused=conn.write_paused)
            conn.upstream = upstream
            if isinstance(sink, Collector):
                sink.bind(upstream)
            try:
                if conn.closed:
                    upstream.client_lost()
                else:
                    assert upstream.transport is not None
                    upstream.transport.write(head)
                    if stream_body:
                        body_task = self._send_body(upstream)
                return upstream, await result, body_task
            except UpstreamGone:
                if attempt or not upstream.reused or stream_body or upstream.head_sent:
                    raise
            finally:
                conn.upstream = None
            upstream = self._upstream = await server.pool.acquire(fresh=True)
        raise AssertionError("unreachable")

    def _send_body(self, upstream: UpstreamConnection) -> "asyncio.Task[int] | None":
        """Start the request body upstream: at once when it is all buffered, else in a task."""
        req, conn = self.req, self.conn
        assert req is not None
        if self.wants_continue:
            conn.send(CONTINUE)
        sent = bodies.send_buffered(conn, upstream, req)
        if sent is not None:
            self.record.bytes_in += sent
            return None
        reader = bodies.RequestBody(conn, req, idle_timeout=self.server.config.timeouts.body,
                                    limit=self.server.config.server.max_body)
        task = asyncio.get_running_loop().create_task(bodies.forward(reader, upstream))
        task.add_done_callback(lambda t: _body_done(t, upstream))
        return task

    def _count_tokens(self, upstream: UpstreamConnection) -> None:
        counts = usage_from_tail(join_tail(upstream.tail()))
        record = self.record
        record.model = counts.get("model", record.model)
        record.prompt_tokens = counts.get("prompt_tokens")
        record.completion_tokens = counts.get("completion_tokens")

    # --- the end ---------------------------------------------------------------------

    def finish(self, first_byte: float | None) -> None:
        """Write the access-log record (the request is over, whatever its outcome)."""
        log = self.server.access_log
        if not log.enabled:
            return
        record = self.record
        record.duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        if first_byte:
            record.ttfb_ms = round((first_byte - self.started) * 1000, 3)
        log.record(record)

    @property
    def cors_bytes(self) -> bytes:
        return header_bytes(self.cors) if self.cors else b""


def _body_done(task: "asyncio.Task[int]", upstream: UpstreamConnection) -> None:
    """A body that could not be sent ends the exchange with the upstream too."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None or isinstance(exc, ClientGone):
        return  # a client hang-up reaches the upstream through connection_lost
    upstream.fail(exc if isinstance(exc, GuardError) else UpstreamGone())
