"""One timer for the deadlines of every upstream exchange under way on a loop."""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Watched(Protocol):
    """An exchange with deadlines (relay.UpstreamConnection)."""

    first_byte_timeout: float
    read_timeout: float

    def check_timeout(self, now: float) -> None: ...


class Watch:
    """The upstream connections with an exchange attached, looked at together every tick.

    One timer for all of them instead of one per exchange: a timer handle
    costs about half a KiB for as long as a stream runs, and the deadlines
    here are seconds to minutes.  A tick is an eighth of the shortest limit
    being watched (at least 10 ms, at most 1 s), so a deadline is kept to
    within an eighth of itself; a read timeout to within two eighths, as
    body reads are seen by the sweep, not timed one by one.
    """

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watch]" = weakref.WeakKeyDictionary()

    __slots__ = ("loop", "active", "_handle", "_tick", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.active: set[Watched] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._tick = 1.0

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "Watch":
        watch = cls._by_loop.get(loop)
        if watch is None:
            watch = cls._by_loop[loop] = cls(loop)
        return watch

    def add(self, conn: Watched) -> None:
        self.active.add(conn)
        tick = _tick_for(conn)
        if self._handle is None or tick < self._tick:
            self._schedule(tick)

    def discard(self, conn: Watched) -> None:
        self.active.discard(conn)

    def _schedule(self, tick: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._tick = tick
        self._handle = self.loop.call_later(tick, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        if not self.active:
            return
        now = self.loop.time()
        for conn in list(self.active):
            conn.check_timeout(now)
        if self.active:
            self._schedule(min(_tick_for(c) for c in self.active))


def _tick_for(conn: Watched) -> float:
    return min(1.0, max(0.01, min(conn.first_byte_timeout, conn.read_timeout) / 8))
