"""The engine's protocol code (client connection, exchange, admission, forwarding, host set) driven
with memory transports and a clock that jumps (support/virtual.py): every deadline checked to the
second, none waited for, no socket opened.  The socket tests keep the end-to-end behaviour."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any, Awaitable, Callable

from conftest import ADMIN_KEY, KEY, OTHER_KEY, make_config
from guardproxy.config.model import Config, Timeouts, TrafficLimits, Upstream, UpstreamHost
from guardproxy.config.values import parse_budget
from guardproxy.engine.accesslog import AccessLog
from guardproxy.engine.client import ClientConnection
from guardproxy.engine.hosts import Member
from guardproxy.engine.relay import UpstreamConnection
from guardproxy.engine.server import GuardServer
from support.raw_http import request_bytes
from support.virtual import MemoryTransport, VirtualClockLoop, attach, settle

LAPTOP, OWNER = {"X-API-Key": KEY}, {"X-API-Key": ADMIN_KEY}
GENERATE = json.dumps({"model": "llama3.2", "prompt": "hi", "options": {"num_predict": 20}}).encode()


def ok(body: bytes = b"{}") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def final_line(prompt: int, completion: int) -> bytes:
    return ok(json.dumps({"model": "llama3.2", "response": "x", "done": True, "prompt_eval_count": prompt,
                          "eval_count": completion}).encode())


class Engine:
    """A GuardServer never started: its clients and its hosts on memory transports."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = GuardServer(config, access_log=AccessLog(""))
        self.upstreams: list[tuple[UpstreamConnection, MemoryTransport]] = []
        for member in self.server.hosts.members.values():
            member.pool.connect = self._connector(member)  # type: ignore[method-assign]

    def _connector(self, member: Member) -> Callable[[], Awaitable[UpstreamConnection]]:
        async def connect() -> UpstreamConnection:
            conn = UpstreamConnection(self.loop, member.pool._forget)
            self.upstreams.append((conn, attach(conn, MemoryTransport(("127.0.0.1", 11434)))))
            return conn
        return connect

    def send(self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
             ) -> MemoryTransport:
        """A new client connection that sends one request."""
        conn = ClientConnection(self.server)
        t = attach(conn, MemoryTransport())
        conn.data_received(request_bytes(method, target, body, headers))
        return t

    async def response(self, client: MemoryTransport, limit: float = 10_000.0) -> tuple[int, dict[str, str], bytes]:
        """The client's response once it is whole (virtual seconds pass meanwhile)."""
        deadline = self.loop.time() + limit
        while True:
            data = bytes(client.written)
            if b"\r\n\r\n" in data:
                head, body = data.split(b"\r\n\r\n", 1)
                lines = head.decode().split("\r\n")
                fields = dict(line.split(": ", 1) for line in lines[1:])
                if len(body) >= int(fields.get("Content-Length", "0")):
                    return int(lines[0].split()[1]), fields, body
            client.wrote.clear()
            await asyncio.wait_for(client.wrote.wait(), deadline - self.loop.time())

    async def stop(self) -> None:
        await self.server.stop(grace=0)


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


def test_a_host_that_never_answers_is_a_504_after_first_byte_and_is_not_tried_again() -> None:
    async def scenario() -> None:
        e = Engine(make_config(11434, timeouts=Timeouts(first_byte=300.0)))
        t0 = e.loop.time()
        client = e.send("POST", "/api/generate", GENERATE, LAPTOP)
        status, _, body = await e.response(client)
        assert status == 504 and json.loads(body)["error"]
        assert 300.0 <= e.loop.time() - t0 <= 302.0
        assert len(e.upstreams) == 1 and e.upstreams[0][1].aborted   # closed: Ollama stops generating
        await e.stop()
    run(scenario)


def test_a_generation_waits_for_its_slot_queue_timeout_and_no_more() -> None:
    async def scenario() -> None:
        e = Engine(make_config(11434, limits=TrafficLimits(max_concurrent=1, queue_timeout=30.0)))
        first = e.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        t0 = e.loop.time()
        second = e.send("POST", "/api/generate", GENERATE, LAPTOP)
        status, fields, _ = await e.response(second)
        assert (status, fields["Retry-After"]) == (503, "1") and 30.0 <= e.loop.time() - t0 <= 30.1
        assert len(e.upstreams) == 1 and not first.written   # the first still holds the slot
        await e.stop()
    run(scenario)


def test_a_waiting_generation_is_decided_again_when_its_slot_frees() -> None:
    async def scenario() -> None:
        keys = list(make_config(1).keys)
        keys[0] = replace(keys[0], tokens=parse_budget("100/day"), max_concurrent=1)
        e = Engine(make_config(11434, keys=tuple(keys)))
        first = e.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        second = e.send("POST", "/api/generate", GENERATE, LAPTOP)   # its 20 + 21 fit beside the first's: it waits
        await settle()
        assert e.server.hosts.waiting.queued == 1 and len(e.upstreams) == 1   # (the one queue, in process)
        e.upstreams[0][0].data_received(final_line(26, 40))   # 66 spent: 41 more no longer fit
        assert (await e.response(first))[0] == 200
        status, _, body = await e.response(second)
        assert status == 429 and json.loads(body) == {"error": "token budget exceeded"}
        assert len(e.upstreams) == 1   # it never reached a host
        await e.stop()
    run(scenario)


def test_a_request_a_host_read_and_dropped_is_not_sent_again() -> None:
    async def scenario() -> None:
        e = Engine(make_config(11434))
        client = e.send("GET", "/api/version", None, OWNER)
        await settle()
        e.upstreams[0][0].data_received(ok())
        assert (await e.response(client))[0] == 200             # the connection goes back to the pool
        client = e.send("POST", "/api/create", b'{"model":"m","from":"llama3.2"}', OWNER)
        await settle()
        conn, host = e.upstreams[0]
        assert host.written.count(b"POST /api/create") == 1
        host.close()                                            # read, then dropped
        status, _, _ = await e.response(client)
        assert status == 502 and len(e.upstreams) == 1          # no fresh connection, no second copy
        await e.stop()
    run(scenario)


def test_a_read_a_host_dropped_is_sent_again_on_a_fresh_connection() -> None:
    async def scenario() -> None:
        e = Engine(make_config(11434))
        client = e.send("GET", "/api/version", None, OWNER)
        await settle()
        e.upstreams[0][0].data_received(ok())
        assert (await e.response(client))[0] == 200
        client = e.send("GET", "/api/version", None, OWNER)
        await settle()
        e.upstreams[0][1].close()
        await settle()
        assert len(e.upstreams) == 2 and b"GET /api/version" in e.upstreams[1][1].written
        e.upstreams[1][0].data_received(ok())
        assert (await e.response(client))[0] == 200
        await e.stop()
    run(scenario)


def test_a_generation_waits_queue_timeout_in_all_through_the_slot_and_host_queues() -> None:
    """One queue for a key's slot and a host: a request that waited for its key's slot gets the host
    with it, in its turn, and no request waits more than queue_timeout in all."""
    async def scenario() -> None:
        keys = list(make_config(1).keys)
        keys[0] = replace(keys[0], max_concurrent=1)
        e = Engine(make_config(11434, keys=tuple(keys), limits=TrafficLimits(queue_timeout=30.0),
                               upstreams=(UpstreamHost("a", Upstream("127.0.0.1", 11434), max_concurrent=1),)))
        first = e.send("POST", "/api/generate", GENERATE, LAPTOP)   # holds the laptop's slot and the host
        await settle()
        t0 = e.loop.time()
        second = e.send("POST", "/api/generate", GENERATE, LAPTOP)  # waits for the laptop's slot
        await asyncio.sleep(20.0)
        third = e.send("POST", "/api/generate", GENERATE, {"X-API-Key": OTHER_KEY})   # waits for the host
        await asyncio.sleep(5.0)
        e.upstreams[0][0].data_received(final_line(26, 20))   # slot and host go to the second, first in line
        assert (await e.response(first))[0] == 200
        await settle()
        assert e.server.hosts.waiting.queued == 1   # the third still waits
        status, _, _ = await e.response(third)
        assert status == 503 and 50.0 <= e.loop.time() - t0 <= 50.1   # 30 s after it came
        e.upstreams[-1][0].data_received(final_line(26, 20))
        assert (await e.response(second))[0] == 200
        await e.stop()
    run(scenario)


def _client(e: Engine) -> tuple[ClientConnection, MemoryTransport]:
    conn = ClientConnection(e.server)
    return conn, attach(conn, MemoryTransport())


def test_a_head_that_never_ends_is_a_408_after_the_header_timeout() -> None:
    async def scenario() -> None:
        e = Engine(make_config(11434, timeouts=Timeouts(header=10.0)))
        conn, t = _client(e)
        t0 = e.loop.time()
        conn.data_received(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n")   # and nothing more
        status, _, _ = await e.response(t)
        assert status == 408 and 10.0 <= e.loop.time() - t0 <= 10.1 and not e.upstreams
        await e.stop()
    run(scenario)


def test_a_body_that_stops_is_a_408_after_the_body_timeout() -> None:
    async def scenario() -> None:
        e = Engine(make_config(11434, timeouts=Timeouts(body=30.0)))
        conn, t = _client(e)
        t0 = e.loop.time()
        conn.data_received(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() +
                           b"\r\nContent-Length: 100\r\n\r\n" + GENERATE[:40])
        status, _, _ = await e.response(t)
        assert status == 408 and 30.0 <= e.loop.time() - t0 <= 30.1 and not e.upstreams
        await e.stop()
    run(scenario)


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async def scenario() -> None:
        e = Engine(make_config(11434, timeouts=Timeouts(keepalive=30.0)))
        conn, t = _client(e)
        conn.data_received(request_bytes("GET", "/health"))
        assert (await e.response(t))[0] == 200
        t0 = e.loop.time()
        assert conn.task is not None
        await asyncio.wait_for(conn.task, 100.0)   # the connection's loop ends ...
        assert t.is_closing() and 30.0 <= e.loop.time() - t0 <= 30.1   # ... when keepalive has passed
        await e.stop()
    run(scenario)


def test_a_host_with_room_goes_to_the_waiting_keys_by_their_weights() -> None:
    async def scenario() -> None:
        keys = list(make_config(1).keys)
        keys[0] = replace(keys[0], weight=4)   # the laptop; the phone keeps weight 1
        e = Engine(make_config(11434, keys=tuple(keys),
                               upstreams=(UpstreamHost("a", Upstream("127.0.0.1", 11434), max_concurrent=1),)))

        def body(who: str) -> bytes:
            return json.dumps({"model": "llama3.2", "prompt": who}).encode()
        e.send("POST", "/api/generate", body("first"), LAPTOP)
        await settle()
        for _ in range(10):
            e.send("POST", "/api/generate", body("laptop"), LAPTOP)
            e.send("POST", "/api/generate", body("phone"), {"X-API-Key": OTHER_KEY})
        await settle()
        assert e.server.hosts.waiting.queued == 20
        order = []
        for _ in range(11):
            # the connection with a request on it (state 0: idle, no exchange attached)
            conn, host = next((c, t) for c, t in e.upstreams if c.state != 0 and not t.is_closing())
            order.append(json.loads(bytes(host.written).rsplit(b"\r\n\r\n", 1)[1])["prompt"][0])
            conn.data_received(final_line(1, 1))
            await settle()
        assert "".join(order) == "f" + "llllp" * 2
        await e.stop()
    run(scenario)
