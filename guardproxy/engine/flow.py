"""Backpressure on an upstream connection, both ways.

Response bytes: a client that cannot keep up pauses the upstream's reading
(ClientConnection calls pause_for_client/resume_for_client), so a slow client
closes the upstream's TCP window instead of growing a buffer here.  While a
zero-copy body is under way the kernel reads the upstream socket (splice.py),
and a client's resume must not start the event loop reading it too.

Request bytes: the upstream transport's pause_writing/resume_writing gate
drain(), which a streamed request body awaits between reads (bodies.forward),
as asyncio's own FlowControlMixin does for streams.

A mixin of relay.UpstreamConnection, not an object of its own: the flags live
in the connection's slots, so an open stream pays nothing for them, and the
splice, the deadlines and the end of each exchange read `_paused_by_client`
without a second object in between.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .failures import UpstreamGone
from .response import IDLE
from .splice import Splice


class Flowing(Protocol):
    """What the flow control uses of the connection."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    closed: bool
    state: int
    _splice: Splice | None
    _paused_by_client: bool
    _write_paused: bool
    _drain_waiter: asyncio.Future[None] | None

    def _wake_drain(self) -> None: ...


class FlowControl:
    __slots__ = ()
    # (slots of the connection: annotated here for the type checker only)
    _paused_by_client: bool
    _write_paused: bool
    _drain_waiter: asyncio.Future[None] | None

    # --- response bytes: the client's pace --------------------------------------

    def pause_for_client(self: Flowing) -> None:
        """The client's socket is full: stop reading the upstream (nothing while no exchange is attached)."""
        if not self._paused_by_client and self.state != IDLE and not self.closed and self.transport is not None:
            self._paused_by_client = True
            self.transport.pause_reading()

    def resume_for_client(self: Flowing) -> None:
        if self._paused_by_client:
            self._paused_by_client = False
            if not self.closed and self.transport is not None and self._splice is None:
                self.transport.resume_reading()

    def _resume_after_client(self: Flowing) -> None:
        """The exchange is over: a pooled connection must read again (to see the host close it)."""
        if self._paused_by_client:
            self._paused_by_client = False
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()

    # --- request bytes: the upstream's pace --------------------------------------

    def pause_writing(self: Flowing) -> None:
        self._write_paused = True

    def resume_writing(self: Flowing) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self: Flowing) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self: Flowing) -> None:
        """Return once the upstream takes more request bytes; UpstreamGone once it is closed."""
        if self.closed:
            raise UpstreamGone()
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None
            if self.closed:
                raise UpstreamGone()
