"""The engine without sockets or wall-clock waits: an event loop whose clock jumps, and memory transports.

    loop = VirtualClockLoop()
    loop.run_until_complete(scenario())   # a 300 s deadline passes in a few milliseconds

Time on the loop (loop.time(), so asyncio.timeout, call_later and every deadline of the engine)
passes only when nothing is ready to run: then it jumps at once to the next timer.  So a test
drives the engine the way uvicorn's tests/protocols/test_http.py does, with MemoryTransport on
both sides, and checks every deadline to the second without waiting for any of them.  (The
plain asyncio loop only: uvloop keeps its own clock in libuv.)

The loop's create_connection reaches MemoryHosts instead of the network: a host registered at an
address accepts (or refuses, or never answers the connect), and records each request written to
it, which it answers itself (`answer`) or leaves to the test (`Sent.reply`).
"""

from __future__ import annotations

import asyncio
import json
import selectors
from typing import Any, Callable


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
        self.hosts: dict[tuple[str, int], MemoryHost] = {}
        selector = _JumpingSelector()
        selector.loop = self
        super().__init__(selector)

    def time(self) -> float:
        return self.now

    async def create_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol],  # type: ignore[override]
                                host: str | None = None, port: int | None = None, **_: Any
                                ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """A connection to the MemoryHost at (host, port); refused where none is, or when it refuses."""
        target = self.hosts.get((str(host), int(port or 0)))
        if target is None or target.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        if target.hang:
            await self.create_future()   # a SYN nobody answers: only the connect timeout ends it
        protocol = protocol_factory()
        transport = MemoryTransport((str(host), int(port or 0)))
        transport.peer_side = target.received
        target.connections.append(transport)
        attach(protocol, transport)
        return transport, protocol


class MemoryTransport(asyncio.Transport):
    """A transport that records what is written and what is done to it."""

    def __init__(self, peer: tuple[str, int] = ("198.51.100.7", 50000)) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False    # closed (or aborted) by its protocol's side
        self.aborted = False
        self.hung_up = False   # closed by the other side (hang_up)
        self.peer = peer
        self.protocol: asyncio.BaseProtocol | None = None
        self.wrote = asyncio.Event()   # set at every write (cleared by whoever waits for the next)
        self.peer_side: Callable[[MemoryTransport], None] | None = None   # told of every write

    def write(self, data: Any) -> None:
        self.written += data
        self.wrote.set()
        if self.peer_side is not None and not self.is_closing():
            self.peer_side(self)

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
        if not self.is_closing() and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def close(self) -> None:
        self._lose()
        self.closed = True

    def abort(self) -> None:
        if self.is_closing():
            return   # (as asyncio's: nothing is buffered here, so a closed transport is gone already)
        self._lose()
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted or self.hung_up

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    # --- what the other side does ---------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """The other side sends `data`."""
        assert isinstance(self.protocol, asyncio.Protocol) and not self.is_closing()
        self.protocol.data_received(data)

    def hang_up(self) -> None:
        """The other side closes the connection."""
        self._lose()
        self.hung_up = True


def attach(protocol: asyncio.BaseProtocol, transport: MemoryTransport) -> MemoryTransport:
    """`protocol` connected over `transport` (connection_made called)."""
    transport.protocol = protocol
    protocol.connection_made(transport)
    return transport


async def settle(turns: int = 50) -> None:
    """Let every task run as far as it can without time passing (a bounded number of loop turns)."""
    for _ in range(turns):
        await asyncio.sleep(0)


# --- hosts ----------------------------------------------------------------------------------

class Sent:
    """One request as a host read it, on the connection it came on."""

    def __init__(self, transport: MemoryTransport, head: bytes, body: bytes) -> None:
        self.transport, self.head, self.body = transport, head, body
        self.method, self.target = head.split(b" ", 2)[:2]
        self.answered = False

    def json(self) -> Any:
        return json.loads(self.body)

    def reply(self, data: bytes) -> None:
        self.answered = True
        self.transport.receive(data)


def response(status: int = 200, body: bytes = b"{}", reason: str = "OK", headers: str = "") -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
            % (status, reason.encode(), headers.encode(), len(body), body))


def ollama_checks(host: "MemoryHost", sent: Sent) -> bytes | None:
    """What an Ollama answers at once: the gate's health checks, list fetches, its version (None: anything else)."""
    if sent.method != b"GET":
        return None
    if sent.target == b"/":
        return response(200, b"Ollama is running", headers="") if host.healthy else response(500, b"{}", "Error")
    if sent.target == b"/api/version":
        return response(200, b'{"version":"0.9.0"}')
    if sent.target in (b"/api/tags", b"/api/ps"):
        own = host.tags_body if sent.target == b"/api/tags" else host.ps_body
        if own is not None:
            return response(200, own)
        names = host.models if sent.target == b"/api/tags" else host.loaded
        return response(200, json.dumps({"models": [{"name": n, "model": n} for n in names]}).encode())
    return None


class MemoryHost:
    """An upstream at one address of a VirtualClockLoop.

    `refuse`: connects are refused; `hang`: a connect never completes.  Every request is kept in
    `requests`; `answer(host, sent)` may answer it at once (bytes), else it waits for the test.
    """

    def __init__(self, loop: VirtualClockLoop, address: tuple[str, int],
                 answer: Callable[["MemoryHost", Sent], bytes | None] | None = ollama_checks,
                 models: tuple[str, ...] = ("llama3.2:latest",), loaded: tuple[str, ...] = ()) -> None:
        self.loop, self.address, self.answer = loop, address, answer
        self.refuse = self.hang = False
        self.healthy = True
        self.models, self.loaded = models, loaded
        self.tags_body: bytes | None = None   # answered instead of a list of `models` / `loaded`
        self.ps_body: bytes | None = None
        self.connections: list[MemoryTransport] = []
        self.requests: list[Sent] = []
        self._read: dict[int, int] = {}   # bytes of each connection's writes taken as requests
        loop.hosts[address] = self

    def received(self, transport: MemoryTransport) -> None:
        data, at = bytes(transport.written), self._read.get(id(transport), 0)
        while (end := data.find(b"\r\n\r\n", at)) >= 0:
            head = data[at:end + 4]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(data) < end + 4 + length:
                return
            at = end + 4 + length
            self._read[id(transport)] = at
            sent = Sent(transport, head, data[end + 4:at])
            self.requests.append(sent)
            answer = None if self.answer is None else self.answer(self, sent)
            if answer is not None:
                sent.answered = True
                self.loop.call_soon(lambda t=transport, a=answer: t.is_closing() or t.receive(a))

    @property
    def work(self) -> list[Sent]:
        """The requests that are not health checks or list fetches."""
        return [s for s in self.requests if not (s.method == b"GET" and s.target in (b"/", b"/api/tags", b"/api/ps"))]

    @property
    def pending(self) -> list[Sent]:
        """Requests not answered yet on connections still open."""
        return [s for s in self.requests if not s.answered and not s.transport.is_closing()]
