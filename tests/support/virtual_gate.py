"""A GuardServer driven through its protocol factory on a VirtualClockLoop (support/virtual.py).

    def test_x() -> None:
        async def scenario() -> None:
            g = Gate(make_config(11434, timeouts=Timeouts(first_byte=300.0)))
            client = g.send("POST", "/api/generate", GENERATE, LAPTOP)
            status, headers, body = await g.response(client)
            ...
            await g.stop()
        run(scenario)

The server is never started (no listening socket): each client is a ClientConnection, the
protocol the listener makes, on a MemoryTransport, and each configured host is a MemoryHost at
its address, reached through the loop's create_connection (so the pool's own connect, with its
connect timeout, runs).  The server's and the host set's clocks are the loop's, so rates, bans and
breakers run on virtual time too.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from guardproxy.config.model import Config
from guardproxy.engine.accesslog import AccessLog, LogRecord
from guardproxy.engine.client import ClientConnection
from guardproxy.engine.server import GuardServer
from support.raw_http import request_bytes
from support.virtual import MemoryHost, MemoryTransport, VirtualClockLoop, attach, response, settle


class Records(AccessLog):
    """An access log kept in memory: one dict per request, as the line would say."""

    def __init__(self) -> None:
        super().__init__("")
        self.enabled = True
        self.lines: list[dict[str, Any]] = []

    def record(self, rec: LogRecord) -> None:
        self.lines.append(rec.to_dict())


Response = tuple[int, dict[str, str], bytes]


def parse_response(data: bytes) -> tuple[Response, int] | None:
    """The first whole response in `data` (Content-Length or chunked) and its length; None if not whole."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    status, at = int(lines[0].split()[1]), end + 4
    if fields.get("Transfer-Encoding") == "chunked":
        body = b""
        while True:
            size_end = data.find(b"\r\n", at)
            if size_end < 0:
                return None
            size = int(data[at:size_end], 16)
            if len(data) < size_end + 2 + size + 2:
                return None
            body += data[size_end + 2:size_end + 2 + size]
            at = size_end + 2 + size + 2
            if size == 0:
                return (status, fields, body), at
    length = int(fields.get("Content-Length", "0"))
    if len(data) < at + length:
        return None
    return (status, fields, data[at:at + length]), at + length


class Gate:
    """A GuardServer never started: its clients and its hosts on memory transports."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.get_running_loop()
        assert isinstance(self.loop, VirtualClockLoop)
        self.log = Records()
        self.server = GuardServer(config, access_log=self.log)
        self.server.clock = self.loop.time
        self.server.hosts.clock = self.loop.time
        self.hosts: dict[str, MemoryHost] = {}
        for settings in config.hosts():
            address = (settings.address.host, settings.address.port)
            self.hosts[settings.name] = self.loop.hosts.get(address) or MemoryHost(self.loop, address)
        if config.routing.health_interval > 0:
            self.server.health.apply()   # (what start() does, without a listening socket)
        self._read: dict[int, int] = {}
        self.clients: list[ClientConnection] = []

    def waiting(self) -> int:
        """Requests waiting in the gate, for a slot or for a host (what the waiting gauge shows)."""
        return self.server.state.waiting() + self.server.hosts.waiting.queued

    @property
    def host(self) -> MemoryHost:
        """The only host."""
        (only,) = self.hosts.values()
        return only

    def connect(self) -> tuple[ClientConnection, MemoryTransport]:
        """A new client connection, as the listener would make it."""
        conn = ClientConnection(self.server)
        self.clients.append(conn)
        return conn, attach(conn, MemoryTransport())

    def send(self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
             ) -> MemoryTransport:
        """A new client connection that sends one request."""
        conn, t = self.connect()
        conn.data_received(request_bytes(method, target, body, headers))
        return t

    async def response(self, client: MemoryTransport, limit: float = 10_000.0) -> Response:
        """The client's next response once it is whole (virtual seconds pass meanwhile)."""
        deadline = self.loop.time() + limit
        while True:
            at = self._read.get(id(client), 0)
            found = parse_response(bytes(client.written[at:]))
            if found is not None:
                self._read[id(client)] = at + found[1]
                return found[0]
            client.wrote.clear()
            await asyncio.wait_for(client.wrote.wait(), deadline - self.loop.time())

    async def closed(self, conn: ClientConnection, limit: float = 10_000.0) -> None:
        """Until the connection's serving task has ended (and its transport is closed)."""
        assert conn.task is not None
        await asyncio.wait_for(asyncio.shield(conn.task), limit)

    async def until_time(self, at: float) -> None:
        """Move the clock to `at` (whatever is due before then runs in its turn)."""
        await asyncio.sleep(at - self.loop.time())

    async def stop(self) -> None:
        await self.server.stop(grace=0)
        tasks = [c.task for c in self.clients if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=60.0)
        await settle()


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


# --- what tests send and what hosts answer ----------------------------------------------------

def _keys() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    from conftest import ADMIN_KEY, KEY, OTHER_KEY
    return {"X-API-Key": KEY}, {"X-API-Key": OTHER_KEY}, {"X-API-Key": ADMIN_KEY}


LAPTOP, PHONE, OWNER = _keys()   # make_config's keys: laptop, phone, owner (admin)


def generation(model: str = "llama3.2", prompt: str = "hi", tokens: int = 20) -> bytes:
    return json.dumps({"model": model, "prompt": prompt, "options": {"num_predict": tokens}}).encode()


GENERATE = generation()


def final_line(prompt: int, completion: int, model: str = "llama3.2") -> bytes:
    """A whole non-streamed generation answer with its token counts."""
    return response(200, json.dumps({"model": model, "response": "x", "done": True, "prompt_eval_count": prompt,
                                     "eval_count": completion}).encode())


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
