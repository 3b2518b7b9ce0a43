"""The splice: the only place response bytes are copied between the two sockets.

The upstream side is a Protocol, so a token read from Ollama goes out to the
client inside the same data_received call: no await, no queue, no copy.  The
client's pause_writing/resume_writing drive the upstream's
pause_reading/resume_reading (through the `*_for_client` methods), so a
slow client closes the upstream's TCP window instead of growing a buffer here.

The relay knows no client connection: it writes to a Sink (the client's
transport, or a Collector for a response read whole) and is told about the
client by whoever attached it.

UpstreamConnection does one thing itself, the token path (a body read: one
framing feed, one sink write, and for a generation one keep), and hands its
other jobs to small parts beside it:

    response.py   the state table (IDLE, HEAD, BODY and the moves between them),
                  the head with its interim heads (HeadReader), the framing it names
    token_tail.py what a generation keeps for its token counts (TokenTail; None otherwise)
    held.py       an answer held back while another host may take the request (HeldAnswer)
    deadlines.py  first-byte and read timeouts, a paused client, a blocked splice (the Deadlines base)
    flow.py       backpressure both ways (the FlowControl mixin)
    zero_copy.py  a long Content-Length body handed to the kernel (the ZeroCopyBodies mixin)
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Callable, cast

from ..wire.errors import GuardError
from ..wire.framing import CloseFraming, Framing, FramingError, LengthFraming, NoBody
from ..wire.heads import BadUpstreamHead
from .deadlines import Deadlines
from .failures import ClientGone, UpstreamGone
from .flow import FlowControl
from .held import NO_HOLD, HeldAnswer
from .response import BEGIN, BODY, END, FINAL_HEAD, HEAD, IDLE, MAX_RESPONSE_HEAD, TRANSITIONS, HeadReader
from .sinks import NOWHERE, Collector, Sink
from .splice import Splice
from .token_tail import TokenTail
from .watch import Watch
from .zero_copy import ZeroCopyBodies

__all__ = ["MAX_RESPONSE_HEAD", "NO_HOLD", "UpstreamConnection", "set_nodelay"]


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class UpstreamConnection(ZeroCopyBodies, FlowControl, Deadlines, asyncio.Protocol):
    """One keep-alive connection to the upstream; splices each response to a client."""

    # Slots, not a __dict__: one of these lives per open stream, and past 30
    # attributes CPython stops sharing instance-dict keys (about 1.5 KiB each).
    __slots__ = ("loop", "_on_idle_close", "transport", "closed", "reused", "idle_since", "state",
                 "_sink", "_reader", "_framing", "_tail", "_kept", "held", "result", "head_sent", "status",
                 "bytes_out", "head_at", "answered", "close_client", "_keep_alive", "_watch",
                 "_paused_by_client", "_write_paused", "_drain_waiter", "_splice")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_idle_close: Callable[["UpstreamConnection"], None]) -> None:
        self.loop = loop
        self._on_idle_close = on_idle_close
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0  # loop time it went back to the pool
        self.state = IDLE  # (response.py: the states and the moves between them)
        self._sink: Sink = NOWHERE
        self._reader = HeadReader()
        self._framing: Framing = NoBody()
        self._tail: TokenTail | None = None  # only while a generation keeps its ends
        self._kept: TokenTail | None = None  # this connection's, made for its first generation and reused
        # A response whose status was in `hold`: kept here whole instead of
        # reaching the client, which may then be answered by another host.
        self.held: HeldAnswer | None = None
        self.result: asyncio.Future[bool] | None = None
        self.head_sent = False
        self.status = 0
        self.bytes_out = 0
        self.head_at = 0.0
        self.answered = False  # some byte of this exchange's answer has come back
        self.close_client = False
        self._keep_alive = False
        Deadlines.__init__(self)
        self._watch = Watch.of(loop)
        self._paused_by_client = False  # (flow.py)
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._splice: Splice | None = None  # (zero_copy.py)

    # --- lifecycle -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)

    def begin(self, sink: Sink, *, head_request: bool, keep_alive: bool, read_timeout: float,
              first_byte_timeout: float | None = None, extra_headers: bytes = b"", tail: int = 0,
              head: int = 0, paused: bool = False, splice_write_timeout: float | None = None,
              hold: frozenset[int] = NO_HOLD) -> "asyncio.Future[bool]":
        """Start one exchange whose response goes to `sink`; the future says if the connection is reusable.

        `tail`/`head`: bytes of the body's end/start to keep for token counts (0: none).
        `paused`: the client's writes are paused already (see pause_for_client).
        `splice_write_timeout`: a long Content-Length body may go zero-copy (splice.py) straight
        into the client's socket, and a client that reads none of it for this long is dropped.
        `hold`: statuses whose response is kept in `held`, whole, instead of going to `sink`.
        IllegalTransition if an exchange is attached already.
        """
        self.state = TRANSITIONS[self.state][BEGIN]  # (IllegalTransition: an exchange is attached already)
        self._sink = sink
        if type(sink) is Collector:
            sink.bind(self)  # past its limit, it ends this exchange
        self._reader.start(head_request, keep_alive, extra_headers, hold)
        self.head_sent = False
        self.status = 0
        self.bytes_out = 0
        self.head_at = 0.0  # (a pooled connection still holds its last response's)
        self.close_client = not keep_alive
        # Only generations keep references to their last reads (for token counts),
        # so a bulk response never holds more than the transport's own buffer.
        if tail:
            kept = self._kept
            if kept is None:
                kept = self._kept = TokenTail()  # (once per connection: making one costs more than a small answer's head)
            kept.start(tail, head)
            self._tail = kept
        else:
            self._tail = None
        self.held = None
        self.answered = False
        self.result = self.loop.create_future()
        # Until the response head arrives the clock is the first-byte timeout
        # (a cold model load can take minutes); after it, the gap between reads.
        self.start_clock(self.loop.time(), read_timeout if first_byte_timeout is None else first_byte_timeout,
                         read_timeout, splice_write_timeout)
        self._watch.add(self)
        if paused:
            self.pause_for_client()
        return self.result

    def _detach(self) -> None:
        self.state = TRANSITIONS[self.state][END]
        self._watch.discard(self)
        self._sink = NOWHERE
        if self._splice is not None:
            self._splice.close()
            self._splice = None
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()
        if self._paused_by_client:
            self._resume_after_client()

    def _finish(self, reusable: bool) -> None:
        self._detach()
        fut = self.result
        if fut is not None and not fut.done():
            fut.set_result(reusable and self._keep_alive and not self.closed)

    def fail(self, err: BaseException) -> None:
        """End the current exchange with an error; the connection is not reused."""
        if self.state == IDLE:
            return  # (no exchange to end: a late error of one already over)
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
        self._wake_drain()
        if self.state == BODY and isinstance(self._framing, CloseFraming):
            self._finish(False)  # the close is the end of a close-delimited body
        elif self.state != IDLE:
            self.fail(UpstreamGone())
        else:
            self._on_idle_close(self)

    # --- the response ----------------------------------------------------------

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        # The contract is "bytes-like": Windows' proactor loop passes a bytearray, and a
        # loop may reuse the buffer once this returns.  Pieces of a read are kept (the
        # head buffer, the tail for token counts), so anything but bytes becomes bytes
        # here, once; the Linux loops pass bytes and pay one type check.
        if type(data) is not bytes:
            data = bytes(data)
        if self.state == BODY:
            # The token path: one scan, one write, no allocation, no clock (deadlines.py).
            # Written out here rather than in a part of its own: a call per read costs more
            # than the rest of this branch.
            try:
                end = self._framing.feed(data)
            except FramingError:
                self.fail(UpstreamGone("upstream sent a malformed body"))
                return
            if end < 0:
                self._sink.write(data)
                self.bytes_out += len(data)
                if self._tail is not None:
                    self._tail.keep(data)
                return
            self._end_of_body(data, end)
        elif self.state == HEAD:
            # (no clock here: the first-byte deadline runs from begin() to the final head,
            # so neither a trickled head nor interim heads put it off)
            self._head_data(data)
        elif self.transport is not None:
            self.transport.abort()  # bytes with no request outstanding: out of sync

    def tail(self) -> tuple[bytes, bytes]:
        """(the body's start, its end) kept for token counts; then forgets them."""
        kept = self._tail
        if kept is None:
            return b"", b""
        self._tail = None
        return kept.take()

    def _end_of_body(self, data: bytes, end: int) -> None:
        if self._tail is not None and end:
            self._tail.keep(data[:end])
        if end:
            self._sink.write(data if end == len(data) else data[:end])
            self.bytes_out += end
        self._finish(reusable=end == len(data))

    def _head_data(self, data: bytes) -> None:
        self.answered = True
        reader = self._reader
        try:
            final = reader.feed(data)
        except GuardError as err:
            self.fail(err)
            return
        if final is None:
            return
        rh, framing, rest = final
        self.last_read = self.loop.time()  # from here on the read timeout counts
        self.status = rh.status
        if reader.hold and rh.status in reader.hold:
            self._sink = self.held = HeldAnswer(self)
            self.held.response = rh
        elif type(self._sink) is Collector:
            self._sink.response = rh  # it rewrites the answer, so it needs the parsed head
        self.close_client = rh.close_client
        self._keep_alive = rh.upstream_keep_alive
        self._framing = framing
        self.bytes_out = len(rh.head)
        self.head_at = time.perf_counter()
        self.state = TRANSITIONS[self.state][FINAL_HEAD]
        end = 0
        if rest and not framing.done:
            try:
                # (a view reaches only the framings that count its length: response.HeadReader)
                end = framing.feed(cast(bytes, rest))
            except FramingError:
                # Nothing has gone to the client yet: it can still get a 502.
                self.fail(BadUpstreamHead("upstream sent a malformed body"))
                return
        self.head_sent = self.held is None
        if self._tail is not None and rest:
            self._tail.keep(rest[:end] if end >= 0 else rest)
        if end < 0:
            writelines = getattr(self._sink, "writelines", None) if type(rest) is memoryview else None
            if writelines is not None:
                writelines((rh.head, rest))  # one writev (uvloop), the body's bytes not copied
            else:
                self._sink.write(rh.head + rest)
            self.bytes_out += len(rest)
            if self.client_write_timeout is not None and type(framing) is LengthFraming:
                self._start_splice(framing)
            return
        if framing.done:
            self._sink.write(rh.head + rest[:end] if end else rh.head)
            self.bytes_out += end
            # A response with no body by definition (HEAD, 204, 304) is never followed by a reuse:
            # a host may still send a body for it, and those bytes would be read as the next
            # request's response, another client's.
            self._finish(reusable=end == len(rest) and not rh.no_body)
        else:
            self._sink.write(rh.head)

    def check_timeout(self, now: float) -> None:
        """Called by Watch: end the exchange if one of its deadlines (deadlines.py) has passed."""
        if self.state == IDLE:
            return
        splice = self._splice
        overdue = self.overdue(now, self.state == BODY, self.bytes_out, self._paused_by_client,
                               splice.blocked_since if splice is not None else 0.0)
        if overdue is None:
            return
        if overdue is ClientGone:
            cast(asyncio.Transport, self._sink).abort()  # (the splice writes to a client's transport)
        self.fail(overdue())
