"""The engine without sockets or wall-clock waits: an event loop whose clock jumps, and memory transports.

    loop = VirtualClockLoop()
    loop.run_until_complete(scenario())   # a 300 s deadline passes in a few milliseconds

Time on the loop (loop.time(), so asyncio.timeout, call_later and every deadline of the engine)
passes only when nothing is ready to run: then it jumps at once to the next timer.  So a test
drives the engine the way uvicorn's tests/protocols/test_http.py does, with MemoryTransport on
both sides, and checks every deadline to the second without waiting for any of them.  (The
plain asyncio loop only: uvloop keeps its own clock in libuv.)
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _JumpingSelector(selectors.DefaultSelector):
    loop: "VirtualClockLoop"

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("nothing can ever run: every task waits and no timer is set")
        self.loop.now += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 1000.0
        selector = _JumpingSelector()
        selector.loop = self
        super().__init__(selector)

    def time(self) -> float:
        return self.now


class MemoryTransport(asyncio.Transport):
    """A transport that records what is written and what is done to it."""

    def __init__(self, peer: tuple[str, int] = ("198.51.100.7", 50000)) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.peer = peer
        self.protocol: asyncio.BaseProtocol | None = None
        self.wrote = asyncio.Event()   # set at every write (cleared by whoever waits for the next)

    def write(self, data: Any) -> None:
        self.written += data
        self.wrote.set()

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def _lose(self) -> None:
        if not (self.closed or self.aborted) and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def close(self) -> None:
        self._lose()
        self.closed = True

    def abort(self) -> None:
        self._lose()
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default


def attach(protocol: asyncio.BaseProtocol, transport: MemoryTransport) -> MemoryTransport:
    """`protocol` connected over `transport` (connection_made called)."""
    transport.protocol = protocol
    protocol.connection_made(transport)
    return transport


async def settle(turns: int = 50) -> None:
    """Let every task run as far as it can without time passing (a bounded number of loop turns)."""
    for _ in range(turns):
        await asyncio.sleep(0)
