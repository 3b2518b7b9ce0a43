"""The core gate over real sockets, its upstream side: failures, keep-alive, pipelining, bodies, the log, a graceful stop."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from conftest import ADMIN_KEY, KEY, Proxy, start_proxy
from guardproxy.config.model import Timeouts
from guardproxy.testing.fake_ollama import FakeOllama
from support.ports import free_port
from support.raw_http import exchange, fetch, read_response, request_bytes

AUTH = {"X-API-Key": KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}  # the fake's /fake/blob is not an Ollama route: admin keys only



# --- upstream failures ------------------------------------------------------------------

@pytest.mark.perf
async def test_upstream_refused_is_fast_502(tmp_path) -> None:
    port = free_port()  # nothing listens there
    p = await start_proxy(port, tmp_path)
    try:
        t0 = time.monotonic()
        r = await fetch(p.port, "GET", "/api/tags", headers=AUTH)
        assert r.status == 502 and json.loads(r.body) == {"error": "upstream unavailable"}
        assert time.monotonic() - t0 < 1.0
        assert p.log_lines()[-1]["outcome"] == "upstream_error"
    finally:
        await p.server.stop(grace=0)


async def test_upstream_first_byte_timeout_is_504(tmp_path) -> None:
    stalled = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        stalled.set()
        await reader.read()  # never answers
        writer.close()

    up = await asyncio.start_server(silent, "127.0.0.1", 0)
    p = await start_proxy(up.sockets[0].getsockname()[1], tmp_path, timeouts=Timeouts(first_byte=0.3))
    try:
        r = await fetch(p.port, "GET", "/api/tags", headers=AUTH)
        assert stalled.is_set() and r.status == 504
        assert json.loads(r.body) == {"error": "upstream first byte timeout"}
    finally:
        await p.server.stop(grace=0)
        up.close()


# --- keep-alive, pipelining, bodies ----------------------------------------------------------

async def test_keepalive_both_sides(proxy: Proxy, fake: FakeOllama) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    for _ in range(3):
        writer.write(request_bytes("GET", "/api/tags", headers=AUTH))
        r = await asyncio.wait_for(read_response(reader), 5)
        assert r.status == 200
    writer.close()
    assert fake.connections_opened == 1  # the pooled upstream connection was reused


async def test_pipelined_requests_answered_in_order_each_authenticated(proxy: Proxy, fake: FakeOllama) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request_bytes("GET", "/api/version", headers=AUTH)
                 + request_bytes("GET", "/health")
                 + request_bytes("GET", "/api/tags", headers=AUTH)
                 + request_bytes("GET", "/api/tags"))
    statuses = [(await asyncio.wait_for(read_response(reader), 5)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 401]
    writer.close()
    assert [r.target for r in fake.requests] == ["/api/version", "/api/tags"]


async def test_request_bodies_forwarded_as_framed(proxy: Proxy, fake: FakeOllama) -> None:
    body = json.dumps({"model": "llama3.2", "prompt": "x" * 200_000, "stream": False}).encode()
    r = await fetch(proxy.port, "POST", "/api/generate", body, AUTH)
    assert r.status == 200 and fake.requests[-1].body == body
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7000]), body[i:i + 7000]) for i in range(0, len(body), 7000))
    # A key whose model is checked (every key without the cloud scope): read whole, sent with its length.
    r = await fetch(proxy.port, "POST", "/api/generate", chunked + b"0\r\n\r\n",
                    {**AUTH, "Transfer-Encoding": "chunked"})
    assert r.status == 200 and fake.requests[-1].body == body
    assert fake.requests[-1].header("content-length") == str(len(body))
    # A key nothing needs the model of: streamed, re-chunked by guardproxy.
    r = await fetch(proxy.port, "POST", "/api/generate", chunked + b"0\r\n\r\n",
                    {**ADMIN, "Transfer-Encoding": "chunked"})
    assert r.status == 200 and fake.requests[-1].body == body
    assert fake.requests[-1].header("transfer-encoding") == "chunked"


async def test_expect_100_continue(proxy: Proxy, fake: FakeOllama) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    body = b'{"model":"llama3.2","prompt":"hi","stream":false}'
    head = request_bytes("POST", "/api/generate", body, {**AUTH, "Expect": "100-continue"})[:-len(body)]
    writer.write(head)
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    r = await asyncio.wait_for(read_response(reader), 5)
    assert r.status == 200
    assert fake.requests[-1].header("expect") is None
    writer.close()


async def test_refused_request_with_body_closes_connection(proxy: Proxy, fake: FakeOllama) -> None:
    # The unread body must never be parsed as a next request.
    smuggled = request_bytes("GET", "/api/tags", headers=AUTH)
    raw = await exchange(proxy.port, request_bytes("POST", "/api/generate", smuggled))
    assert raw.startswith(b"HTTP/1.1 401") and b"Connection: close" in raw
    assert raw.count(b"HTTP/1.1") == 1
    assert fake.requests == []


async def test_access_log_line(proxy: Proxy, fake: FakeOllama) -> None:
    await fetch(proxy.port, "POST", "/api/generate?x=1", b'{"model":"llama3.2","prompt":"hi"}', AUTH)
    (e,) = proxy.log_lines()
    assert e["method"] == "POST" and e["path"] == "/api/generate" and e["status"] == 200
    assert e["key"] == "laptop" and e["outcome"] == "ok" and e["client"] == "127.0.0.1"
    assert e["bytes_in"] > 34 and e["bytes_out"] > 500
    assert 0 <= e["ttfb_ms"] <= e["duration_ms"]
    assert e["time"].endswith("Z")


async def test_graceful_stop_lets_running_stream_finish(fake: FakeOllama, tmp_path) -> None:
    p = await start_proxy(fake.port, tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(request_bytes("POST", "/api/generate",
                               b'{"model":"llama3.2","prompt":"hi","fake_delay":0.02,"options":{"num_predict":15}}',
                               {**AUTH, "Connection": "close"}))
    await asyncio.wait_for(reader.readuntil(b"tok0"), 10)
    stopping = asyncio.create_task(p.server.stop(grace=10))
    rest = await asyncio.wait_for(reader.read(-1), 5)
    assert b'"done":true' in rest and rest.endswith(b"0\r\n\r\n")
    await asyncio.wait_for(stopping, 5)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", p.port)


async def test_upstream_closing_idle_connection_is_not_reused(tmp_path) -> None:
    connections = 0

    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers one request as keep-alive, then closes anyway (an upstream restart).
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    up = await asyncio.start_server(one_shot, "127.0.0.1", 0)
    p = await start_proxy(up.sockets[0].getsockname()[1], tmp_path)
    try:
        for _ in range(3):
            r = await fetch(p.port, "GET", "/api/tags", headers=AUTH)
            assert (r.status, r.body) == (200, b"ok")
        assert connections == 3
    finally:
        await p.server.stop(grace=0)
        up.close()
