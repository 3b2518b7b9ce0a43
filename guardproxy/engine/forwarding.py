"""The trip to the upstream for one request: a host's pooled connection, the head and the body
out, the response relayed into a sink; a retry on a fresh connection when a pooled one turns out
stale, and on another host when this one fails before the first byte.

It works on a Trip, the few things of an exchange it needs, so the exchange
can stay about decisions and answers.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..config.model import Config
from ..decisions import routes
from ..decisions.routes import Route
from ..decisions.routing import Failure, Request, fail_over
from ..wire.errors import GuardError
from ..wire.heads import CONTINUE, RequestHead
from . import bodies
from . import pool as pool_rules
from .accesslog import LogRecord
from .client import ClientConnection
from .failures import (ClientGone, ConnectFailed, ConnectRefused, ConnectTimeout, FirstByteTimeout,
                       UpstreamGone)
from .hosts import HostSet, Member
from .relay import NO_HOLD, UpstreamConnection
from .sinks import Sink
from .tokens import HEAD_BYTES, LONG_TAIL_BYTES, TAIL_BYTES


class Trip(Protocol):
    """What of an exchange the trip upstream reads, and what it writes: `upstream`, and on a
    failover `member` and `wanted`."""

    conn: ClientConnection
    req: RequestHead | None
    route: Route
    record: LogRecord
    upstream: UpstreamConnection | None
    member: Member | None
    wanted: Request | None  # what routing knows of the request (None until admission placed it)

    @property
    def config(self) -> Config: ...
    @property
    def hosts(self) -> HostSet: ...
    @property
    def wants_continue(self) -> bool: ...
    def upstream_head(self, authority: bytes) -> bytes: ...
    async def elsewhere(self, failed: Member, wanted: Request) -> tuple[Member, Request] | None: ...


# What relay() returns: the connection, whether it may be pooled again, the task still sending the body.
Relayed = tuple[UpstreamConnection, bool, "asyncio.Task[int] | None"]


async def relay(trip: Trip, body: bytes, sink: Sink, *, keep_alive: bool, extra: bytes, stream_body: bool,
                counts: bool = False) -> Relayed:
    """Send the head and `body` (or stream the body) to `trip.member`; the response goes to `sink`.

    `counts`: keep what the route's token counts need of the response body.

    Returns the connection, whether it may be pooled again, and the task
    still sending the body, if one had to.  Nothing that may have run is sent
    again: once any byte of a request was written to a host, only a read
    (pool.is_read: listings, show, version) is; a generation or an admin
    mutation that the host read and then dropped ends in a 502.  So a pooled
    connection the host had closed is retried once on a fresh one only for a
    read (pool.may_send_again; one already known closed is never taken),
    and another host is tried (decisions.routing.fail_over, at most [routing]
    max_attempts) after a connect failure, or after a 503 or 429 (or a 404 for
    a model the host listed), answers Ollama gives before it runs anything;
    those are kept from the client until it is known whether another host
    takes the request.  Raises ClientGone or a GuardError, with the connection
    in `trip.upstream`.
    """
    conn, req = trip.conn, trip.req
    assert req is not None and trip.member is not None
    hosts = trip.hosts
    timeouts = trip.config.timeouts
    zero_copy = trip.config.server.zero_copy and sink is conn.transport
    counts_at = trip.route.counts if counts else ""
    tail = 0 if not counts else LONG_TAIL_BYTES if counts_at == routes.RESPONSES else TAIL_BYTES
    head_bytes = HEAD_BYTES if counts_at == routes.ANTHROPIC else 0
    body_task: asyncio.Task[int] | None = None
    reads = pool_rules.is_read(trip.route)   # may be sent again though a host read it
    attempts, fresh = 1, False
    while True:
        member, wanted = trip.member, trip.wanted
        assert wanted is not None   # (placed at admission, moved by a failover)
        trip.record.upstream = member.name
        hold = NO_HOLD if stream_body else hosts.hold_for(member, wanted, attempts)
        sent_at = hosts.clock()
        upstream = trip.upstream = None
        written = False   # some of this request reached the host: it may have run
        try:
            pool = member.pool
            # (pool.acquire written out: a pooled connection is had without creating a coroutine)
            upstream = trip.upstream = (None if fresh else pool.idle()) or await pool.connect()
            result = upstream.begin(sink, head_request=req.method == b"HEAD", keep_alive=keep_alive,
                                    read_timeout=timeouts.read, first_byte_timeout=timeouts.first_byte,
                                    extra_headers=extra, tail=tail, head=head_bytes, paused=conn.write_paused,
                                    splice_write_timeout=timeouts.write if zero_copy else None, hold=hold)
            conn.upstream = upstream
            if conn.closed:
                upstream.client_lost()
            else:
                assert upstream.transport is not None
                upstream.transport.write(trip.upstream_head(member.authority) + body)
                written = True
                if stream_body:
                    body_task = _send_body(trip, upstream)
            reusable = await result
        except (ClientGone, GuardError) as exc:
            if not fresh and pool_rules.may_send_again(upstream, exc, read=reads, streamed=stream_body):
                fresh = True
                continue
            failure = _failure(exc, upstream)
            if failure is None:
                raise
            hosts.failed(member, failure, sent_at=sent_at)
            # To another host only what cannot have run (nothing of it was written), or a read.
            again = not written or (reads and not stream_body)
            if not await _elsewhere(trip, failure, 0, attempts, again):
                raise
            attempts, fresh = attempts + 1, False
            continue
        finally:
            conn.upstream = None
        held = upstream.held
        if held is None:
            hosts.answered(member, upstream.status, sent_at)
            return upstream, reusable, body_task
        # An answer kept from the client: another host takes the request, or it goes out after all.
        status = upstream.status
        if status == 404:
            assert wanted.model is not None
            hosts.not_found(member, wanted.model)
        else:
            hosts.failed(member, Failure.STATUS, status, sent_at=sent_at)
        if await _elsewhere(trip, Failure.STATUS, status, attempts, True):
            if reusable:
                member.pool.release(upstream)
            else:
                upstream.close()
            attempts, fresh = attempts + 1, False
            continue
        upstream.held, upstream.head_sent = None, True
        sink.write(bytes(held.data))
        return upstream, reusable, body_task


def _failure(exc: BaseException, upstream: UpstreamConnection | None) -> Failure | None:
    """What routing calls a failed attempt; None for what is not the host's doing (the client left)."""
    if isinstance(exc, ConnectRefused):
        return Failure.REFUSED
    if isinstance(exc, ConnectTimeout):
        return Failure.CONNECT_TIMEOUT
    if isinstance(exc, ConnectFailed):
        return Failure.RESET  # unreachable: no connection, as good as reset
    if upstream is None or isinstance(exc, ClientGone):
        return None
    if upstream.head_sent:
        return Failure.STARTED
    if isinstance(exc, FirstByteTimeout):
        return Failure.FIRST_BYTE_TIMEOUT
    if isinstance(exc, UpstreamGone):
        return Failure.RESET
    return None


async def _elsewhere(trip: Trip, failure: Failure, status: int, attempts: int, replayable: bool) -> bool:
    """Move the request to another host when routing says so; False: this attempt's outcome stands.

    `replayable`: the request may be sent again (none of it reached the host, or it is a read;
    a held answer: the host ran nothing), and its body can be (it was read whole, or none was sent).
    """
    wanted, member = trip.wanted, trip.member
    assert wanted is not None and member is not None
    if not replayable:
        return False
    # A 404 is held back only when the host's list held the model, and only then retried.
    if not fail_over(failure, status, attempts=attempts, max_attempts=trip.config.routing.max_attempts,
                     listed=status == 404):
        return False
    moved = await trip.elsewhere(member, wanted)
    if moved is None:
        return False
    trip.member, trip.wanted = moved
    return True

def _send_body(trip: Trip, upstream: UpstreamConnection) -> "asyncio.Task[int]":
    """Start copying the request body upstream, in a task (a body already wholly buffered
    was taken by the exchange and goes out with the head)."""
    req, conn = trip.req, trip.conn
    assert req is not None
    if trip.wants_continue:
        conn.send(CONTINUE)
    config = trip.config
    blob = trip.route.blob
    # Blob uploads (gigabytes, admin keys) have no whole-body deadline; silence still counts.
    reader = bodies.RequestBody(conn, req, idle_timeout=config.timeouts.body,
                                limit=config.server.max_blob if blob else config.server.max_body,
                                total_timeout=None if blob else config.timeouts.body_total)
    task = asyncio.get_running_loop().create_task(bodies.forward(reader, upstream))
    task.add_done_callback(lambda t: _body_done(t, upstream))
    return task


def _body_done(task: "asyncio.Task[int]", upstream: UpstreamConnection) -> None:
    """A body that could not be sent ends the exchange with the upstream too."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None or isinstance(exc, ClientGone):
        return  # a client hang-up reaches the upstream through connection_lost
    upstream.fail(exc if isinstance(exc, GuardError) else UpstreamGone())
