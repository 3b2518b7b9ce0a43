"""The trip to the upstream for one request: a pooled connection, the head and the body out,
the response relayed into a sink, and one retry when a pooled connection turns out stale.

It works on a Trip, the few things of an exchange it needs, so the exchange
can stay about decisions and answers.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..config.model import Config
from ..decisions import routes
from ..decisions.routes import Route
from ..wire.errors import GuardError
from ..wire.heads import CONTINUE, RequestHead
from . import bodies
from .accesslog import LogRecord
from .client import ClientConnection
from .failures import ClientGone, UpstreamGone
from .pool import UpstreamPool
from .relay import Collector, Sink, UpstreamConnection
from .tokens import HEAD_BYTES, LONG_TAIL_BYTES, TAIL_BYTES


class Trip(Protocol):
    """What of an exchange the trip upstream reads, and `upstream`, which it writes."""

    conn: ClientConnection
    req: RequestHead | None
    route: Route
    record: LogRecord
    upstream: UpstreamConnection | None

    @property
    def config(self) -> Config: ...
    @property
    def pool(self) -> UpstreamPool: ...
    @property
    def wants_continue(self) -> bool: ...


async def relay(trip: Trip, head: bytes, sink: Sink, *, keep_alive: bool, extra: bytes, stream_body: bool,
                 counts: bool = False) -> tuple[UpstreamConnection, bool, "asyncio.Task[int] | None"]:
    """Send `head` (and stream the body) upstream; the response goes to `sink` until it ends.

    `counts`: keep what the route's token counts need of the response body.

    Returns the connection, whether it may be pooled again, and the task
    still sending the body, if one had to.  A pooled connection the upstream
    had just closed is retried once on a fresh one when nothing of the body
    was consumed, as nginx does.  Raises ClientGone or a GuardError, with
    the connection in `trip.upstream`.
    """
    conn, req, pool = trip.conn, trip.req, trip.pool
    assert req is not None
    timeouts = trip.config.timeouts
    zero_copy = trip.config.server.zero_copy and sink is conn.transport
    counts_at = trip.route.counts if counts else ""
    tail = 0 if not counts else LONG_TAIL_BYTES if counts_at == routes.RESPONSES else TAIL_BYTES
    head_bytes = HEAD_BYTES if counts_at == routes.ANTHROPIC else 0
    upstream = trip.upstream = pool.idle() or await pool.connect()
    body_task: asyncio.Task[int] | None = None
    for attempt in (0, 1):
        result = upstream.begin(sink, head_request=req.method == b"HEAD", keep_alive=keep_alive,
                                read_timeout=timeouts.read, first_byte_timeout=timeouts.first_byte,
                                extra_headers=extra, tail=tail, head=head_bytes, paused=conn.write_paused,
                                splice_write_timeout=timeouts.write if zero_copy else None)
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
                    body_task = _send_body(trip, upstream)
            return upstream, await result, body_task
        except UpstreamGone:
            if attempt or not upstream.reused or stream_body or upstream.head_sent:
                raise
        finally:
            conn.upstream = None
        upstream = trip.upstream = await pool.connect()
    raise AssertionError("unreachable")

def _send_body(trip: Trip, upstream: UpstreamConnection) -> "asyncio.Task[int] | None":
    """Start the request body upstream: at once when it is all buffered, else in a task."""
    req, conn = trip.req, trip.conn
    assert req is not None
    if trip.wants_continue:
        conn.send(CONTINUE)
    sent = bodies.send_buffered(conn, upstream, req)
    if sent is not None:
        trip.record.bytes_in += sent
        return None
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
