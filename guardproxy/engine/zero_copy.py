"""The zero-copy path of relay.UpstreamConnection: the rest of a long Content-Length body is
handed to the kernel (splice.py) instead of passing through the event loop.

A mixin, so that the per-read path of the relay stays one class; these methods
run once per body, not per read.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..wire.framing import Framing, LengthFraming
from .failures import ClientGone, UpstreamGone
from .sinks import Sink
from .splice import AVAILABLE as SPLICE_AVAILABLE, SPLICE_MIN, Splice, socket_fd
from .token_tail import TokenTail


class Spliceable(Protocol):
    """What the zero-copy path uses of the connection."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    closed: bool
    bytes_out: int
    _sink: Sink
    _framing: Framing
    _splice: Splice | None
    _tail: TokenTail | None
    _paused_by_client: bool

    def _spliced(self, n: int) -> None: ...
    def _splice_done(self) -> None: ...
    def _splice_failed(self, exc: BaseException, client_side: bool) -> None: ...
    def _finish(self, reusable: bool) -> None: ...
    def fail(self, err: BaseException) -> None: ...


class ZeroCopyBodies:
    __slots__ = ()
    _splice: Splice | None  # (a slot of the connection: annotated here for the type checker only)

    def _start_splice(self: Spliceable, framing: LengthFraming) -> None:
        """Hand the rest of a long body to the kernel, all but the tail a generation keeps for its counts."""
        count = framing.remaining - (self._tail.budget if self._tail is not None else 0)
        if count < SPLICE_MIN or not SPLICE_AVAILABLE:
            return
        sink = self._sink
        buffered = getattr(sink, "get_write_buffer_size", None)
        if buffered is None or buffered():
            return  # not a socket's transport, or a client that still holds unsent bytes
        dst, src = socket_fd(sink), socket_fd(self.transport)
        if dst is None or src is None or self.transport is None:
            return
        try:
            splice = Splice(self.loop, src, dst, count, self._spliced, self._splice_done, self._splice_failed)
        except OSError:
            return  # no descriptors to spare (EMFILE): the ordinary path carries the body
        self.transport.pause_reading()  # the kernel takes these bytes now, not the event loop
        framing.remaining -= count
        self._splice = splice
        splice.start()

    def _spliced(self: Spliceable, n: int) -> None:
        self.bytes_out += n  # (progress the read timeout's sweep sees: deadlines.py)

    def _splice_done(self: Spliceable) -> None:
        self._splice = None
        framing = self._framing
        if not self.closed and self.transport is not None and not self._paused_by_client:
            self.transport.resume_reading()
        if isinstance(framing, LengthFraming) and not framing.remaining:
            framing.done = True
            self._finish(reusable=True)

    def _splice_failed(self: Spliceable, exc: BaseException, client_side: bool) -> None:
        self._splice = None
        self.fail(ClientGone() if client_side else UpstreamGone())
