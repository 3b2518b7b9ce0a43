"""One request, from its head to its access-log record.

    parse (strict check, h11) -> /health? -> CORS preflight? -> path shape
    -> ban, per-address rate -> key -> per-key rate -> /metrics? -> endpoint rules
    -> model check (reads a small body) -> admission: one Grant (budget reservation, generation slot, host)
    -> [only now] an upstream connection -> head and body upstream
    -> the relay splices the response -> the record is written -> the slot freed, tokens settled

Limits are kept by `server.state` (engine/state/: in process, or shared through Redis); admission.py
chooses the host (hosts.py) and asks the state for the rest, in one grant that the exchange keeps.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Coroutine, TypeVar
from dataclasses import replace

from ..config.model import Config, KeyEntry
from ..decisions import aliases, body_edits, models, routes
from ..decisions.cors import header_bytes, is_preflight
from ..decisions.body_checks import check_body
from ..decisions.budget import reservation
from ..decisions.routing import Request
from ..wire.errors import BadRequest, Forbidden, GuardError, PayloadTooLarge, Unauthorized, render, response_head
from ..wire.heads import NO_FIELDS, CONTINUE, RequestHead, build_upstream_head, new_request_id, parse_request_head
from . import bodies, forwarding, listing
from .admission import Grant, admit, admit_at_once, finish as settle
from .accesslog import LogRecord, cut
from .client import ClientConnection
from .failures import ClientGone
from .gate import Gate
from .hosts import HostSet, Member
from .metrics import PAGE_HEAD
from .relay import UpstreamConnection
from .tokens import usage_from_tail

RETRY_BODY = 1024 * 1024       # a streamed body this small, wholly received, is kept for a retry
_HEALTH_BODY = b"OK"
_HEALTH = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
           b"Cache-Control: no-store\r\n")
_READY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
_NOT_READY = _READY.replace(b"200 OK", b"503 Service Unavailable")

# A body larger than this (or content-coded) is checked in a worker thread.  One thread: checks
# are CPU work under the GIL, and a single worker leaves the event loop its turn every few ms.
THREADED_CHECK = 256 * 1024
_CHECKS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardproxy-body-check")
_T = TypeVar("_T")


async def _body_work(body: bytes, req: RequestHead, work: Callable[..., _T], *args: Any) -> _T:
    """work(*args): linear in the body, but tens of milliseconds for a big (or decompressed) one,
    which then runs off the loop, in the body-check thread."""
    if len(body) > THREADED_CHECK or req.get(b"content-encoding") is not None:
        return await asyncio.get_running_loop().run_in_executor(_CHECKS, work, *args)
    return work(*args)


class Exchange:
    __slots__ = ("server", "conn", "head", "req", "route", "record", "started", "cors", "upstream", "model",
                 "member", "wanted", "grant", "rid", "body_left", "built")

    def __init__(self, server: Gate, conn: ClientConnection, head: bytes) -> None:
        self.server = server
        self.conn = conn
        self.head = head
        self.req: RequestHead | None = None
        self.route = routes.UNKNOWN
        self.record = LogRecord.new(conn.peer_ip, len(head))
        self.started = time.perf_counter()
        self.cors: list[tuple[str, str]] = []  # CORS headers for every answer to this request
        self.upstream: UpstreamConnection | None = None  # the connection of the last upstream call
        self.model: str | None = None      # the model Ollama will use, when a check or routing read it
        self.member: Member | None = None  # the host the request is on
        self.wanted: Request | None = None  # what routing knows of it (set with `member`)
        self.grant: Grant | None = None     # its admission (engine/admission.py)
        self.rid = new_request_id()  # X-Request-Id, unless the client sends a safe one
        self.body_left = False  # body bytes may still be on the connection: no next request after this one
        self.built: tuple[bytes, bytes] | None = None  # (authority, head) of the upstream head built last

    # --- derived facts ---------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        """The connection stays open after this request (decided now: a shutdown may start mid-stream)."""
        return self.req is not None and self.req.keep_alive and not self.server.closing

    @property
    def has_body(self) -> bool:
        return self.req is not None and (self.req.chunked or bool(self.req.content_length))

    @property
    def config(self) -> Config:
        return self.server.config

    @property
    def hosts(self) -> HostSet:
        return self.server.hosts

    @property
    def wants_continue(self) -> bool:
        return self.req is not None and self.req.expect_continue and self.req.http_version == b"1.1"

    # --- the pipeline ------------------------------------------------------------

    async def run(self) -> bool:
        """Serve the request; True if the connection stays open for the next one.

        One coroutine for the whole pipeline: each level of awaiting costs a
        frame for as long as a stream runs.
        """
        try:
            server, conn, record = self.server, self.conn, self.record
            limits = server.config.server
            self.req = req = parse_request_head(self.head)
            self.body_left = self.has_body
            self.head = b""  # only a head that fails to parse is looked at again (refuse)
            self.rid = req.request_id or self.rid
            record.method = cut(req.method.decode("latin-1"))
            record.path = cut(req.path.decode("latin-1"))
            self.route = route = routes.route_for(req.method, req.path)
            if (req.content_length or 0) > (limits.max_blob if route.blob else limits.max_body):
                raise PayloadTooLarge()
            target = req.target
            if target == b"/health" and req.method in (b"GET", b"HEAD"):
                return self.health()
            if target == b"/ready" and req.method in (b"GET", b"HEAD"):
                n = server.hosts.up_count()
                return self.respond(200 if n else 503, (_READY if n else _NOT_READY) + self.extra_headers,
                                    b'{"upstreams_up":%d}' % n)
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
            state = server.state
            state.before_auth(client, now)
            try:
                key = server.keys.identify(req)
            except Unauthorized as refused:
                record.key, record.key_state = refused.key_name, refused.key_state
                await state.auth_failed(client, now)
                raise
            record.key = key.name
            state.after_auth(key, now)
            if route is routes.METRICS:  # answered here, never forwarded, whatever the key or method
                routes.authorize_metrics(key, req.method, self.has_body)
                return self.respond(200, PAGE_HEAD + self.extra_headers, await server.scrape())
            routes.authorize(key, route, path)
            named = req.get(b"x-guardproxy-upstream")
            if named is not None and not key.admin:
                raise Forbidden("only admin keys may choose an upstream (X-Guardproxy-Upstream)")
            host_name = None if named is None else named.decode("latin-1").strip()
            slot = pol.slots_on and route.generation
            # Routing over several hosts reads the model, and replays a generation's body on a failover.
            routed = server.hosts.several and route.model != routes.NO_MODEL
            # A generation against a token budget reserves its worst case, read from its whole body.
            budgeted = route.generation and key.tokens is not None
            if self.has_body or route.model == routes.PATH:
                body = await self._checked_body(key, route, path, whole=slot or routed or budgeted, routed=routed)
            else:   # (no coroutine for a request without a body: a listing, a version, a health probe)
                if models.needs_model(key, route):
                    raise BadRequest("request body must name a model")
                body = None
            del req  # (it may have been replaced by one framed with the body's length: keep one)
            method = self.req.method
            reserve = self._reservation(key, body) if budgeted else 0
            merged = route.listing and host_name is None and server.hosts.several and method in (b"GET", b"HEAD")
            filtered = route.listing and method == b"GET" and (key.models is not None or listing.lists_aliases(self))
            forward = not (merged or filtered)
            self.grant = grant = (admit_at_once(server, route, self.model, host_name, forward=forward)
                                  or await admit(server, key, client, route, self.model, host_name, reserve,
                                                 conn.lost(), forward=forward))
            try:
                if merged:
                    return await listing.merged(self, key, path)
                if filtered:
                    return await listing.filtered(self, key, path, host_name)
                # The relay is awaited here, not in a coroutine of its own: a frame fewer held for as long
                # as a stream runs.  The body goes to it alone: a stream holds no second reference to it.
                keep_alive = self.keep_alive   # (as the response head says it, when the stream ends too)
                relayed = self.relay_call(body, keep_alive)
                del body
                usage = route.generation
                streams, key_name = server.metrics.streams, record.key or "-"
                streams[key_name] = streams.get(key_name, 0) + 1
                try:
                    upstream, reusable, body_task = await relayed
                except (ClientGone, GuardError) as exc:
                    return self._cut_short(exc, usage)
                finally:
                    streams[key_name] -= 1
                return self.relayed(upstream, reusable, body_task, usage, keep_alive)
            finally:
                settle(server, grant, record, self.member)   # (the host it ended on, after a failover)
        except GuardError as err:
            return self.refuse(err)
        except ClientGone:
            # Gone before anything was forwarded (while its body was read, or in the queue).
            self.record.status, self.record.outcome = 499, "client_gone"
            self.finish(None)
            return False

    def _reservation(self, key: KeyEntry, body: bytes | None) -> int:
        """The tokens this generation reserves of its key's budget (decisions.budget.reservation)."""
        assert self.req is not None
        size = len(body) if body is not None else self.req.content_length or 0
        # (the body as it goes upstream: a cap above the key's max_output_tokens is lowered to it already)
        return reservation(self.route, body or b"", size, key.max_output_tokens, self.config.budgets.reserve)

    async def elsewhere(self, failed: Member, wanted: Request) -> tuple[Member, Request] | None:
        """Another host after a failure before the first byte (forwarding's); a host slot that is the
        state's lease moves with the request."""
        grant, state = self.grant, self.server.state
        lease = grant.ticket if grant is not None and grant.holds_host else None
        move = None if lease is None else lambda m: state.move(lease, m.name, m.settings.max_concurrent)
        return await self.server.hosts.elsewhere(failed, wanted, move)

    async def _checked_body(self, key: KeyEntry, route: routes.Route, path: bytes, *, whole: bool,
                            routed: bool = False) -> bytes | None:
        """Check what the key's policy needs from the request: its model, its keep_alive.

        The body is read whole (bounded, timed) when a check needs it, or when `whole` (a generation
        must not take a slot before its body is complete); then it is forwarded exactly as it came,
        with a Content-Length.  `routed`: routing needs the model even when no check does; a body
        whose model cannot be read then goes on for the host to answer.
        """
        req, record = self.req, self.record
        assert req is not None
        needs_model = models.needs_model(key, route)
        alias_table = aliases.table(self.config.aliases)
        if (needs_model or routed or alias_table) and route.model == routes.PATH:
            in_path = self._path_alias(path[len(route.path):].decode("utf-8", "replace"), alias_table)
            if needs_model:
                models.check_model(key, in_path)
            record.model = cut(in_path)
            self.model = in_path
            return None
        checks_keep_alive = route.keep_alive and key.max_keep_alive is not None
        edits = body_edits.needs_body(key, route, alias_table)
        if not (whole or needs_model or checks_keep_alive or edits):
            return None
        if not self.has_body:
            if needs_model:
                raise BadRequest("request body must name a model")
            return None
        limit = min(route.max_body, self.config.server.max_body)
        body = self._buffered_body(limit)
        if body is None:
            if self.wants_continue:
                self.conn.send(CONTINUE)
            timeouts = self.server.config.timeouts
            body = await bodies.read_whole(bodies.RequestBody(self.conn, req, idle_timeout=timeouts.body,
                                                              limit=limit, total_timeout=timeouts.body_total))
            record.bytes_in += len(body)
            self.body_left = False
        if req.chunked:
            self.req = req.with_length(len(body))
        if edits:
            edited = await _body_work(body, req, body_edits.edit_body, key, route, req, body, alias_table)
            if edited.body is not None:  # forwarded re-encoded, in identity coding
                body = edited.body
                req = (self.req or req).without(b"content-encoding").with_length(len(body))
                self.req = req
                record.alias, record.clamped = edited.alias, list(edited.clamped) or None
        if needs_model or routed or checks_keep_alive:
            found = await _body_work(body, req, check_body, key, route, req, body, needs_model, routed,
                                     checks_keep_alive)
            if found.name is not None:
                record.model = cut(found.name)
                self.model = found.name
            elif found.for_log is not None:
                record.model = found.for_log
        return body

    def _path_alias(self, name: str, table: aliases.Aliases) -> str:
        """/v1/models/{alias}: the target's path goes upstream (a target with a '/' is not one segment)."""
        target = table.target(name)
        if target is None or "/" in target or not target.isascii():
            return name
        assert self.req is not None
        query = self.req.target.partition(b"?")[1:]
        self.req = replace(self.req, target=self.route.path + target.encode() + b"".join(query))
        self.record.alias = name
        return target

    def _buffered_body(self, limit: int) -> bytes | None:
        """A Content-Length body of at most `limit` bytes, wholly buffered already: taken and counted; else None."""
        req = self.req
        assert req is not None
        length = req.content_length or 0
        if req.chunked or length > limit or len(self.conn.buf) < length:
            return None
        self.record.bytes_in += length
        self.body_left = False
        return self.conn.take(length)

    # --- answers guardproxy gives itself --------------------------------------------

    def health(self) -> bool:
        keep = self.keep_alive and not self.body_left
        self.route = routes.HEALTH
        head = _HEALTH + b"X-Request-Id: " + self.rid + (b"\r\n\r\n" if keep else b"\r\nConnection: close\r\n\r\n")
        body = b"" if self.req is not None and self.req.method == b"HEAD" else _HEALTH_BODY
        self.conn.send(head + body)
        self.record.status, self.record.bytes_out = 200, len(head) + len(body)
        self.finish(self.started)
        return keep

    def preflight(self) -> bool:
        """A CORS preflight: answered here, no key needed, never forwarded."""
        assert self.req is not None
        keep = self.keep_alive and not self.body_left
        head = response_head(204, [*self.server.policies.cors.preflight_headers(self.req),
                                   ("X-Request-Id", self.rid.decode())], close=not keep)
        self.conn.send(head)
        self.record.status, self.record.bytes_out = 204, len(head)
        self.finish(self.started)
        return keep

    def respond(self, status: int, head: bytes, body: bytes) -> bool:
        """A whole answer guardproxy built (a listing, /ready, /metrics): `head` lacks only its framing."""
        keep = self.keep_alive and not self.body_left  # a body it never read is not parsed as a request
        out = head + b"Content-Length: %d\r\n" % len(body) + (b"" if keep else b"Connection: close\r\n") + b"\r\n"
        if self.req is not None and self.req.method == b"HEAD":
            body = b""
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
        close = err.close or req is None or self.body_left or not self.keep_alive
        response = render(err, close=close, head_only=req is not None and req.method == b"HEAD",
                          extra_headers=[("X-Request-Id", self.rid.decode()), *self.cors])
        self.conn.linger = close
        self.conn.send(response)
        record.status, record.bytes_out = err.status, len(response)
        record.outcome = "upstream_error" if err.status in (502, 504) else "refused"
        record.error = err.message
        self.server.metrics.refused(err)
        self.finish(self.started)
        return not close

    # --- through the upstream ------------------------------------------------------

    def relay_call(self, body: bytes | None, keep_alive: bool) -> Coroutine[Any, Any, forwarding.Relayed]:
        """Forwarding to the host chosen at admission (its body already read, or streamed now): the
        coroutine that sends the request and splices the response (forwarding.relay), to await."""
        grant = self.grant
        assert grant is not None and grant.member is not None
        self.member, self.wanted = grant.member, grant.wanted   # (chosen at admission)
        if body is None and self.has_body:
            # Wholly here already and small: kept, so it can be sent again (a stale pooled connection,
            # another host).  (A larger one never is: the client's read buffer pauses far below 1 MiB.)
            body = self._buffered_body(RETRY_BODY)
        streamed = body is None and self.has_body
        return forwarding.relay(self, body or b"", self.conn.transport, keep_alive=keep_alive,
                                extra=self.extra_headers, stream_body=streamed, counts=self.route.generation)

    def relayed(self, upstream: UpstreamConnection, reusable: bool, body_task: "asyncio.Task[int] | None",
                usage: bool, keep_alive: bool) -> bool:
        """The response has been spliced: the connection pooled or closed, the record completed.
        True if the client connection stays open for the next request."""
        body_complete = body_task is None or (body_task.done() and not body_task.cancelled()
                                              and body_task.exception() is None)
        if body_task is not None:
            if body_complete:
                self.record.bytes_in += body_task.result()
            else:
                body_task.cancel()
        assert self.member is not None
        if reusable and body_complete:
            self.member.pool.release(upstream)
        else:
            upstream.close()
        self.record.status, self.record.bytes_out = upstream.status, upstream.bytes_out
        if usage:
            self._count_tokens(upstream)
        self.finish(upstream.head_at)
        return keep_alive and body_complete and not upstream.close_client

    def upstream_head(self, authority: bytes) -> bytes:
        """The request's head as a host gets it.  Built once: for another host only its Host line
        changes.  The request's field list is let go then, since a stream holds its exchange for as
        long as it runs and nothing reads the fields after this (1 KiB less per open stream)."""
        built = self.built
        if built is not None:
            old, head = built
            if old == authority:
                return head
            # (the first "Host:" line follows the request line: build_upstream_head writes it there)
            head = head.replace(b"\r\nHost: " + old + b"\r\n", b"\r\nHost: " + authority + b"\r\n", 1)
        else:
            req = self.req
            assert req is not None
            head = build_upstream_head(req, authority, self.record.client.encode(), self.server.scheme, self.rid)
            req.headers = NO_FIELDS
        self.built = (authority, head)
        return head

    def _cut_short(self, exc: Exception, usage: bool) -> bool:
        """The upstream call ended early: the client hung up (499), or it failed (502/504 while
        nothing has reached the client; else the stream is cut)."""
        upstream, record = self.upstream, self.record
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

    def _count_tokens(self, upstream: UpstreamConnection) -> None:
        head, tail = upstream.tail()
        self.record.add_usage(usage_from_tail(tail, head))

    # --- the end ---------------------------------------------------------------------

    def finish(self, first_byte: float | None) -> None:
        """Count the request, write its access-log record: it is over, whatever its outcome."""
        server, record, log = self.server, self.record, self.server.access_log
        duration = time.perf_counter() - self.started
        server.metrics.ended(record, self.route, duration, first_byte - self.started if first_byte else 0.0)
        if not log.enabled:
            return
        record.duration_ms = round(duration * 1000, 3)
        if first_byte:
            record.ttfb_ms = round((first_byte - self.started) * 1000, 3)
        record.request_id = self.rid.decode()
        log.record(record)

    @property
    def extra_headers(self) -> bytes:  # in every answer to this request: its ID, and CORS for a browser
        clamped = self.record.clamped
        return (b"X-Request-Id: " + self.rid + b"\r\n" + (header_bytes(self.cors) if self.cors else b"")
                + (b"X-Guardproxy-Clamped: " + ",".join(clamped).encode() + b"\r\n" if clamped else b""))
