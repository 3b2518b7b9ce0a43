"""The splice: the only place response bytes are copied between the two sockets.

The upstream side is a Protocol, so a token read from Ollama goes out to the
client inside the same data_received call: no await, no queue, no copy.  The
client's pause_writing/resume_writing drive the upstream's
pause_reading/resume_reading (through the three `*_for_client` methods), so a
slow client closes the upstream's TCP window instead of growing a buffer here.

The relay knows no client connection: it writes to a Sink (the client's
transport, or a Collector for a response read whole) and is told about the
client by whoever attached it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Callable, cast

from ..wire.errors import GuardError
from ..wire.framing import ChunkedFraming, CloseFraming, Framing, FramingError, LengthFraming, NoBody
from ..wire.heads import BadUpstreamHead, parse_response_head
from .failures import ClientGone, FirstByteTimeout, UpstreamGone, UpstreamTimeout
from .sinks import NOWHERE, Collector, Sink
from .splice import Splice
from .watch import Watch
from .zero_copy import ZeroCopyBodies

_TAIL_READS = 4  # past this many kept reads they are joined, and cut to the budget
_NONE_KEPT: list[bytes] = []  # shared, never appended to: the tail of a response that keeps none

MAX_RESPONSE_HEAD = 65536
_BIG_REST = 65536  # body bytes behind a response head from which they are viewed, not copied
MAX_INTERIM = 10  # interim heads before a final one (102s: in one read); more is a 502
HELD_LIMIT = 65536  # a held-back error answer (503, 429, 404) larger than this fails the exchange
NO_HOLD: frozenset[int] = frozenset()  # no status is held back (begin's `hold`)

# UpstreamConnection.state.  _IDLE means "no exchange attached": in the pool,
# or between begin() calls.  (A ClientConnection's `idle` is another thing:
# waiting for a client's next request head.)
_IDLE, _HEAD, _BODY = 0, 1, 2


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class UpstreamConnection(ZeroCopyBodies, asyncio.Protocol):
    """One keep-alive connection to the upstream; splices each response to a client."""

    # Slots, not a __dict__: one of these lives per open stream, and past 30
    # attributes CPython stops sharing instance-dict keys (about 1.5 KiB each).
    __slots__ = ("loop", "_on_idle_close", "transport", "closed", "reused", "state",
                 "_sink", "_buf", "_framing", "result", "head_sent", "status", "bytes_out", "_seen_out",
                 "head_at", "last_read", "read_timeout", "first_byte_timeout", "_watch", "_head_request",
                 "_client_keep_alive", "close_client", "_keep_alive", "_paused_by_client", "_write_paused",
                 "_drain_waiter", "_extra_headers", "_tail", "_tail_budget", "_head", "_head_room",
                 "_splice", "_splice_write_timeout", "_hold", "held", "_interim", "answered",
                 "idle_since")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_idle_close: Callable[["UpstreamConnection"], None]) -> None:
        self.loop = loop
        self._on_idle_close = on_idle_close
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.state = _IDLE
        self._sink: Sink = NOWHERE
        self._buf = b""
        self._framing: Framing = NoBody()
        self.result: asyncio.Future[bool] | None = None
        self.head_sent = False
        self.status = 0
        self.bytes_out = 0
        self._seen_out = 0  # bytes_out at the last sweep that saw it change (check_timeout)
        self.head_at = 0.0
        self.last_read = 0.0
        self.read_timeout = 600.0
        self.first_byte_timeout = 300.0
        self._watch = Watch.of(loop)
        self._head_request = False
        self._client_keep_alive = True
        self.close_client = False
        self._keep_alive = False
        self._paused_by_client = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._extra_headers = b""
        # The last few body reads, ending with `_tail_budget` bytes of the body or more (of
        # a large read only its end), and for some shapes the body's first bytes: tokens.py
        # reads the token counts from them once the response has ended.
        self._tail: list[bytes] = _NONE_KEPT  # (a list only while a generation keeps its end)
        self._tail_budget = 0   # 0: not a generation, nothing is kept
        self._head = b""
        self._head_room = 0
        self._splice: Splice | None = None
        self._splice_write_timeout: float | None = None  # None: this exchange never splices
        self._hold = NO_HOLD
        # A response whose status was in `hold`: kept here whole instead of
        # reaching the client, which may then be answered by another host.
        self.held: Collector | None = None
        self._interim = 0  # interim heads skipped in this exchange (102 Processing aside)
        self.answered = False  # some byte of this exchange's answer has come back
        self.idle_since = 0.0  # loop time it went back to the pool

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
        """
        self._sink = sink
        if type(sink) is Collector:
            sink.bind(self)  # past its limit, it ends this exchange
        self._splice_write_timeout = splice_write_timeout
        self.state = _HEAD
        self._buf = b""
        self.head_sent = False
        self.status = 0
        self.bytes_out = self._seen_out = 0
        self.head_at = 0.0  # (a pooled connection still holds its last response's)
        self.close_client = not keep_alive
        self._head_request = head_request
        self._client_keep_alive = keep_alive
        self.read_timeout = read_timeout
        # Until the response head arrives the clock is the first-byte timeout
        # (a cold model load can take minutes); after it, the gap between reads.
        self.first_byte_timeout = read_timeout if first_byte_timeout is None else first_byte_timeout
        self._extra_headers = extra_headers
        # Only generations keep references to their last reads (for token counts),
        # so a bulk response never holds more than the transport's own buffer.
        self._tail = [] if tail else _NONE_KEPT
        self._tail_budget = tail
        self._head = b""
        self._head_room = head
        self._hold = hold
        self.held = None
        self._interim = 0
        self.answered = False
        self.result = self.loop.create_future()
        self.last_read = self.loop.time()
        self._watch.add(self)
        if paused:
            self.pause_for_client()
        return self.result

    def _detach(self) -> None:
        self.state = _IDLE
        self._watch.discard(self)
        self._sink = NOWHERE
        if self._splice is not None:
            self._splice.close()
            self._splice = None
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()
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
        if not self._paused_by_client and self.state != _IDLE and not self.closed and self.transport is not None:
            self._paused_by_client = True
            self.transport.pause_reading()

    def resume_for_client(self) -> None:
        if self._paused_by_client:
            self._paused_by_client = False
            if not self.closed and self.transport is not None and self._splice is None:
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

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        # The contract is "bytes-like": Windows' proactor loop passes a bytearray, and a
        # loop may reuse the buffer once this returns.  Pieces of a read are kept (the
        # head buffer, the tail for token counts), so anything but bytes becomes bytes
        # here, once; the Linux loops pass bytes and pay one type check.
        if type(data) is not bytes:
            data = bytes(data)
        if self.state == _BODY:
            # The token path: one scan, one write, no allocation, no clock (check_timeout).
            try:
                end = self._framing.feed(data)
            except FramingError:
                self.fail(UpstreamGone("upstream sent a malformed body"))
                return
            if end < 0:
                self._sink.write(data)
                self.bytes_out += len(data)
                if self._tail_budget:
                    self._keep(data)
                return
            self._end_of_body(data, end)
        elif self.state == _HEAD:
            # (no clock here: the first-byte deadline runs from begin() to the final head,
            # so neither a trickled head nor interim heads put it off)
            self._head_data(data)
        elif self.transport is not None:
            self.transport.abort()  # bytes with no request outstanding: out of sync

    def _keep(self, data: bytes | memoryview) -> None:
        """Keep the end of the body for token counts, whatever the size of the reads."""
        if self._head_room:  # (the first few KiB of a body: a copy, once)
            piece = data[:self._head_room]
            self._head += piece
            self._head_room -= len(piece)
        budget = self._tail_budget
        kept = self._tail
        if len(data) >= budget:
            # Of a large read only its end is copied, so big buffers are freed
            # (and their pages reused) at once; it replaces every earlier read.
            kept[:] = [bytes(data[-budget:])]  # (bytes of a view: the read's buffer is not pinned)
            return
        # A token read is kept by reference, and only every few reads are they
        # joined and cut to the budget: no sizes summed per read, and at most
        # _TAIL_READS small reads (each under the budget) held.
        kept.append(cast(bytes, data))  # (a view is never this small: _BIG_REST)
        if len(kept) > _TAIL_READS:
            kept[:] = [b"".join(kept)[-budget:]]

    def tail(self) -> tuple[bytes, bytes]:
        """(the body's start, its end) kept for token counts; then forgets them."""
        tail = b"".join(self._tail)[-self._tail_budget:] if self._tail else b""
        head = self._head
        self._tail = _NONE_KEPT
        self._head = b""
        return head, tail

    def _end_of_body(self, data: bytes, end: int) -> None:
        if self._tail_budget and end:
            self._keep(data[:end])
        if end:
            self._sink.write(data if end == len(data) else data[:end])
            self.bytes_out += end
        self._finish(reusable=end == len(data))

    def _head_data(self, data: bytes) -> None:
        self.answered = True
        buf = self._buf + data if self._buf else data
        # Interim heads (103, a stray 100, 102 Processing) are skipped in a loop, never by recursion,
        # and only MAX_INTERIM of them per response.  102 Processing says the host is still at work
        # and may come again and again, but never more than MAX_INTERIM in one read, and it never
        # puts off the first-byte deadline: a host trickling them forever gets its 504.
        burst = 0
        while True:
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
            if rh.status >= 200:
                break
            if rh.status == 101:
                self.fail(BadUpstreamHead("upstream switched protocols"))
                return
            burst += 1
            if rh.status != 102:
                self._interim += 1
            if self._interim > MAX_INTERIM or burst > MAX_INTERIM:
                self.fail(BadUpstreamHead("upstream sent too many interim responses"))
                return
            buf = buf[idx + 4:]
            if not buf:
                return
        self.last_read = self.loop.time()  # from here on the read timeout counts
        # A bulk body's first read (up to 256 KiB behind the head) is viewed, not copied:
        # the framings that never search their input take it as it is (_BIG_REST).
        rest = buf[idx + 4:] if len(buf) - idx - 4 < _BIG_REST else memoryview(buf)[idx + 4:]
        self.status = rh.status
        if self._hold and rh.status in self._hold:
            held = self.held = Collector(HELD_LIMIT, UpstreamGone("upstream error response too large"))
            held.bind(self)
            self._sink = held
        if type(self._sink) is Collector:
            self._sink.response = rh  # it rewrites the answer, so it needs the parsed head
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
        if type(rest) is memoryview and type(framing) is ChunkedFraming:
            rest = bytes(rest)  # the chunked framing searches its input
        self._framing = framing
        self.bytes_out = len(rh.head)
        self.head_at = time.perf_counter()
        self.state = _BODY
        end = 0
        if rest and not framing.done:
            try:
                # (a view reaches only the framings that count its length: see above)
                end = framing.feed(cast(bytes, rest))
            except FramingError:
                # Nothing has gone to the client yet: it can still get a 502.
                self.fail(BadUpstreamHead("upstream sent a malformed body"))
                return
        self.head_sent = self.held is None
        if self._tail_budget and rest:
            self._keep(rest[:end] if end >= 0 else rest)
        if end < 0:
            writelines = getattr(self._sink, "writelines", None) if type(rest) is memoryview else None
            if writelines is not None:
                writelines((rh.head, rest))  # one writev (uvloop), the body's bytes not copied
            else:
                self._sink.write(rh.head + rest)
            self.bytes_out += len(rest)
            if self._splice_write_timeout is not None and type(framing) is LengthFraming:
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
        """Called by Watch: end the exchange if the upstream has been silent too long.

        Until the response head arrives the clock is the first-byte timeout,
        after it the gap between reads.  A stalled client is not the
        upstream's fault: while the client holds the stream paused, the clock
        restarts.  Body reads are not timed one by one (a clock call per
        token): a sweep that finds bytes_out changed counts as a read, so the
        read timeout ends a stream never early and at most one tick late.
        """
        if self.state == _IDLE:
            return
        if self.state == _BODY and self.bytes_out != self._seen_out:
            self._seen_out = self.bytes_out
            self.last_read = now
        splice = self._splice
        if splice is not None and splice.blocked_since:
            # Waiting on the client, not the upstream: the client's write deadline applies.
            if self._splice_write_timeout is not None and now - splice.blocked_since > self._splice_write_timeout:
                cast(asyncio.Transport, self._sink).abort()
                self.fail(ClientGone())
            else:
                self.last_read = now
            return
        if self._paused_by_client:
            self.last_read = now
            return
        limit = self.first_byte_timeout if self.state == _HEAD else self.read_timeout
        if now - self.last_read >= limit:
            self.fail(UpstreamTimeout() if self.state == _BODY else FirstByteTimeout())
