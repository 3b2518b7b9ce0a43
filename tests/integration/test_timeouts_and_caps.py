"""Slow and idle clients, connection caps, and a faulty upstream, all bounded in time.

Each deadline (head, keep-alive, body, write, first byte, read, connect) is checked to the second on a
virtual clock in tests/unit/engine/test_virtual_client.py and test_virtual_forwarding.py; here are
what needs the kernel (backpressure, resets, many sockets) and one deadline end to end
(test_gate_upstream.py: the first byte)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from conftest import KEY, Proxy, start_proxy
from guardproxy.config.model import ServerLimits, Timeouts
from support.polling import until
from support.upstreams import RecordingUpstream, read_request
from support.raw_http import read_response, request_bytes

AUTH = {"X-API-Key": KEY}


async def proxy_for(up: RecordingUpstream, tmp_path: Path, **overrides) -> Proxy:
    return await start_proxy(up.port, tmp_path, **overrides)


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while data := await reader.read(65536):
                out += data
    except ConnectionError:
        pass
    return out


# --- slow heads, idle connections, slow bodies ------------------------------------------------


# --- a client that stops reading --------------------------------------------------------------

@pytest.mark.perf
async def test_client_that_stops_reading_is_dropped_and_upstream_closed(tmp_path: Path) -> None:
    upstream_closed = asyncio.Event()
    pushed = 0

    async def firehose(reader, writer, up) -> None:
        nonlocal pushed
        await read_request(reader, up)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
                pushed += len(chunk)
        except ConnectionError:
            upstream_closed.set()
            raise

    up = await RecordingUpstream.start(firehose)
    p = await start_proxy(up.port, tmp_path, timeouts=Timeouts(write=0.5, read=30))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", p.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
        writer.write(request_bytes("GET", "/api/tags", headers=AUTH))
        await reader.readuntil(b"\r\n\r\n")
        stopped = time.monotonic()  # from here on, never read again
        await asyncio.wait_for(upstream_closed.wait(), 5)
        assert 0.4 < time.monotonic() - stopped < 3.0
        await until(lambda: not p.server.connections)
        assert pushed < 64 * 1024 * 1024  # backpressure held the upstream long before that
        entry = p.log_lines()[-1]
        assert entry["status"] == 499 and entry["outcome"] == "client_gone"
        writer.close()
    finally:
        await p.server.stop(grace=0)
        await up.close()


# --- connection caps --------------------------------------------------------------------------

async def open_idle(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    loop = asyncio.get_running_loop()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.bind((source, 0))
        await loop.sock_connect(s, ("127.0.0.1", port))
        socks.append(s)
    return socks


async def test_per_address_cap_refuses_with_503(upstream: RecordingUpstream, tmp_path: Path) -> None:
    p = await proxy_for(upstream, tmp_path, server=ServerLimits(max_connections_per_ip=3))
    socks: list[socket.socket] = []
    try:
        socks = await open_idle(p.port, 3)
        await until(lambda: len(p.server.connections) == 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        raw = await read_all(reader)
        assert raw.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in raw
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1]) == {"error": "too many connections from your address"}
        writer.close()
        # Another address is not affected by this one's count.
        other = await open_idle(p.port, 1, source="127.0.0.2")
        socks += other
        await until(lambda: len(p.server.connections) == 4)
        # A closed connection frees its place.
        socks.pop(0).close()
        await until(lambda: len(p.server.connections) == 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(request_bytes("GET", "/health"))
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        writer.close()
    finally:
        for s in socks:
            s.close()
        await p.server.stop(grace=0)


async def test_global_cap_refuses_with_503(upstream: RecordingUpstream, tmp_path: Path) -> None:
    p = await proxy_for(upstream, tmp_path, server=ServerLimits(max_connections=2))
    socks: list[socket.socket] = []
    try:
        socks = await open_idle(p.port, 1) + await open_idle(p.port, 1, source="127.0.0.2")
        await until(lambda: len(p.server.connections) == 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        raw = await read_all(reader)
        assert raw.startswith(b"HTTP/1.1 503 ")
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1]) == {"error": "too many connections"}
        assert p.log_lines()[-1]["status"] == 503 and p.log_lines()[-1]["outcome"] == "refused"
        writer.close()
    finally:
        for s in socks:
            s.close()
        await p.server.stop(grace=0)


@pytest.mark.perf
async def test_slowloris_from_one_address_does_not_delay_others(upstream: RecordingUpstream, tmp_path: Path) -> None:
    p = await proxy_for(upstream, tmp_path, server=ServerLimits(max_connections_per_ip=50),
                        timeouts=Timeouts(header=30))
    attackers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    stop = asyncio.Event()

    async def drip(writer: asyncio.StreamWriter) -> None:
        while not stop.is_set():
            try:
                writer.write(b"a")
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(0.05)

    try:
        for _ in range(60):  # 10 more than the address may hold
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", p.port))
            reader, writer = await asyncio.open_connection(sock=s)
            try:
                writer.write(b"GET /api/tags HTTP/1.1\r\nX-Slow: ")
            except ConnectionError:
                pass  # refused at once: over the address's cap
            attackers.append((reader, writer))
        drippers = [asyncio.create_task(drip(w)) for _, w in attackers]
        await until(lambda: p.server.per_ip.get("127.0.0.2") == 50)
        refused = 0
        for reader, _ in attackers:
            try:
                data = await asyncio.wait_for(reader.read(64), 0.05)
            except TimeoutError:
                continue  # still held open: one of the 50
            except ConnectionError:
                data = b"HTTP/1.1 503"  # the 503 was lost to the reset our own writes caused
            assert data.startswith(b"HTTP/1.1 503")
            refused += 1
        assert refused == 10 and len(p.server.connections) == 50
        worst = 0.0
        for _ in range(20):
            t0 = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            writer.write(request_bytes("GET", "/health", headers={"Connection": "close"}))
            r = await asyncio.wait_for(read_response(reader), 5)
            worst = max(worst, time.perf_counter() - t0)
            assert r.status == 200
            writer.close()
        assert worst < 0.25, f"/health took {worst * 1000:.1f} ms under a slowloris"
        stop.set()
        await asyncio.gather(*drippers)
    finally:
        stop.set()
        for _, w in attackers:
            w.close()
        await p.server.stop(grace=0)


# --- a faulty upstream ------------------------------------------------------------------------

async def one_response(up_script, tmp_path: Path, **timeouts) -> tuple[bytes, Proxy, RecordingUpstream]:
    up = await RecordingUpstream.start(up_script)
    p = await start_proxy(up.port, tmp_path, timeouts=Timeouts(**timeouts))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(request_bytes("POST", "/api/generate", b"{}", {**AUTH, "Connection": "close"}))
        raw = await read_all(reader, 10)
        writer.close()
        return raw, p, up
    finally:
        await p.server.stop(grace=0)
        await up.close()


def answer_with(data: bytes, then_close: bool = True):
    async def script(reader, writer, up) -> None:
        await read_request(reader, up)
        writer.write(data)
        await writer.drain()
        if not then_close:
            await reader.read()  # hold the connection open
    return script


@pytest.mark.parametrize("name,response", [
    ("garbage", b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n"),
    ("bad-status", b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"),
    ("http2-status", b"HTTP/2 200\r\n\r\n"),
    ("cl-and-te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("two-lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("te-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok"),
    ("switching-protocols", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
    ("oversized-head", b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * (65 * 1024) + b"\r\n\r\n"),
    ("closed-before-head", b"HTTP/1.1 200 OK\r\nContent-Le"),
])
async def test_bad_upstream_head_is_502_before_anything_is_sent(tmp_path: Path, name: str, response: bytes) -> None:
    raw, p, up = await one_response(answer_with(response, then_close=name == "closed-before-head"), tmp_path)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 "), raw[:200]
    assert "error" in json.loads(body)
    assert raw.count(b"HTTP/1.1") == 1  # nothing of the upstream's answer leaked through
    assert p.log_lines()[-1]["outcome"] == "upstream_error"


async def test_malformed_body_in_the_first_read_is_still_a_502(tmp_path: Path) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"
    raw, p, _ = await one_response(answer_with(data), tmp_path)
    assert raw.startswith(b"HTTP/1.1 502 ") and b"ok" not in raw


@pytest.mark.parametrize("tail", [b"zz\r\n", b"5\r\nab"], ids=["malformed-chunk", "closed-mid-chunk"])
async def test_bad_body_after_head_aborts_the_client(tmp_path: Path, tail: bytes) -> None:
    proceed = asyncio.Event()

    async def script(reader, writer, up) -> None:
        await read_request(reader, up)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
        await writer.drain()
        await proceed.wait()  # the client has the head: what follows cannot become a 502
        writer.write(tail)
        await writer.drain()

    up = await RecordingUpstream.start(script)
    p = await start_proxy(up.port, tmp_path)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(request_bytes("GET", "/api/tags", headers=AUTH))
        first = await asyncio.wait_for(reader.readuntil(b"2\r\nok\r\n"), 5)
        proceed.set()
        rest = await read_all(reader)
        assert first.startswith(b"HTTP/1.1 200 OK")
        assert not rest.endswith(b"0\r\n\r\n") and b"HTTP/1.1" not in rest  # truncated, never completed
        await until(lambda: bool(p.log_lines()))
        assert p.log_lines()[-1]["outcome"] == "upstream_error"
        writer.close()
    finally:
        await p.server.stop(grace=0)
        await up.close()
