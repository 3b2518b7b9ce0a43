"""The core gate over real sockets: health, keys, headers to the upstream, splicing."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import pytest

from conftest import ADMIN_KEY, KEY, OTHER_KEY, Proxy, start_proxy
from guardproxy.testing.fake_ollama import FakeOllama
from support.polling import until, until_still
from support.raw_http import exchange, fetch, request_bytes, without_request_id

AUTH = {"X-API-Key": KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}  # the fake's /fake/blob is not an Ollama route: admin keys only


# --- health ------------------------------------------------------------------

async def test_health_needs_no_key_and_is_never_forwarded(proxy: Proxy, fake: FakeOllama) -> None:
    r = await fetch(proxy.port, "GET", "/health")
    assert (r.status, r.body) == (200, b"OK")
    r = await fetch(proxy.port, "HEAD", "/health")
    assert r.status == 200 and r.header("content-length") == "2"
    assert fake.connections_opened == 0


@pytest.mark.parametrize("target", ["/health/", "/healthz", "/health?x=1", "/Health"])
async def test_health_is_exact_path_only(proxy: Proxy, fake: FakeOllama, target: str) -> None:
    r = await fetch(proxy.port, "GET", target)
    assert r.status == 401
    assert fake.connections_opened == 0


# --- authentication ----------------------------------------------------------------

BAD_AUTH = [
    {},
    {"X-API-Key": "wrong"},
    {"X-API-Key": KEY + "x"},
    {"X-API-Key": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": KEY},
    {"X-API-Key": "x" * 5000},
]


async def test_every_auth_failure_is_the_same_401_and_opens_no_upstream(proxy: Proxy, fake: FakeOllama) -> None:
    answers = set()
    for headers in BAD_AUTH:
        raw = await exchange(proxy.port, request_bytes("GET", "/api/tags", headers={**headers, "Connection": "close"}))
        answers.add(without_request_id(raw))  # each answer has its own ID; nothing else may differ
    # (Two X-API-Key headers are a malformed head, refused with 400: tests/integration/test_attacks.py.)
    assert len(answers) == 1
    (only,) = answers
    assert only.startswith(b"HTTP/1.1 401 ")
    assert only.endswith(b'\r\n\r\n{"error": "unauthorized"}')
    assert fake.connections_opened == 0
    assert fake.requests == []


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"},
                                     {"authorization": f"bearer {OTHER_KEY}"}])
async def test_valid_key_is_proxied_unchanged(proxy: Proxy, fake: FakeOllama, headers: dict[str, str]) -> None:
    via = await fetch(proxy.port, "GET", "/api/tags", headers=headers)
    direct = await fetch(fake.port, "GET", "/api/tags")
    assert via.status == 200
    assert via.body == direct.body
    assert json.loads(via.body)["models"]


async def test_keys_never_reach_upstream_or_log(proxy: Proxy, fake: FakeOllama) -> None:
    await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": KEY})
    await fetch(proxy.port, "POST", "/api/generate", b'{"model":"llama3.2","prompt":"hi"}',
                headers={"Authorization": f"Bearer {OTHER_KEY}"})
    await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": "wrong-guess-123"})
    assert len(fake.requests) == 2
    for req in fake.requests:
        names = {k for k, _ in req.headers}
        assert "x-api-key" not in names and "authorization" not in names
        assert KEY not in repr(req) and OTHER_KEY not in repr(req)
    proxy.server.access_log.flush()
    log = proxy.log_path.read_text()
    assert KEY not in log and OTHER_KEY not in log and "wrong-guess-123" not in log
    assert [e["key"] for e in proxy.log_lines()] == ["laptop", "phone", None]


# --- headers to the upstream -------------------------------------------------------

async def test_host_is_rewritten_and_forwarding_headers_are_ours(proxy: Proxy, fake: FakeOllama) -> None:
    r = await fetch(proxy.port, "GET", "/api/version", headers={
        **AUTH, "Host": "gpu.example.com:11435", "X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6",
        "X-Forwarded-Host": "evil", "Forwarded": "for=6.6.6.6", "Connection": "keep-alive, X-Secret",
        "X-Secret": "hop", "Keep-Alive": "timeout=5", "Upgrade": "h2c", "X-Custom": "kept"})
    # A public Host forwarded unchanged would get Ollama's 403.
    assert r.status == 200
    (req,) = fake.requests
    h = dict(req.headers)
    assert h["host"] == f"127.0.0.1:{fake.port}"
    assert h["x-forwarded-host"] == "gpu.example.com:11435"
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-real-ip"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-custom"] == "kept"
    for gone in ("forwarded", "connection", "x-secret", "keep-alive", "upgrade"):
        assert gone not in h
    assert [k for k, _ in req.headers].count("x-forwarded-for") == 1


# --- streaming -------------------------------------------------------------------------

async def raw_stream(port: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The response body bytes exactly as framed on the wire (chunk lines included)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes("POST", "/api/generate", body, {**(headers or {}), "Connection": "close"}))
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("query", ["size=300000&chunk=97", "size=300000&framing=length"])
async def test_streamed_bytes_identical_to_direct(proxy: Proxy, fake: FakeOllama, query: str) -> None:
    async def raw(port: int, headers: dict[str, str]) -> bytes:
        return await exchange(port, request_bytes("GET", f"/fake/blob?{query}", headers={**headers, "Connection": "close"}))

    via = await raw(proxy.port, ADMIN)
    direct = await raw(fake.port, {})
    # Everything after the head, chunk-size lines included, is the upstream's own bytes.
    assert via.split(b"\r\n\r\n", 1)[1] == direct.split(b"\r\n\r\n", 1)[1]
    assert len(via) > 300000


async def test_ndjson_stream_identical_to_direct_but_for_send_times(proxy: Proxy, fake: FakeOllama) -> None:
    body = b'{"model":"llama3.2","prompt":"hi","options":{"num_predict":40}}'

    async def lines(port: int, headers: dict[str, str]) -> list[bytes]:
        raw = await exchange(port, request_bytes("POST", "/api/generate", body, {**headers, "Connection": "close"}))
        assert raw.endswith(b"\r\n0\r\n\r\n")
        return [re.sub(rb'"(created_at|total_duration|eval_duration)":("[^"]*"|\d+)', b"", line)
                for line in raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n") if line.startswith(b"{")]

    via, direct = await lines(proxy.port, AUTH), await lines(fake.port, {})
    assert via == direct and len(via) == 41


async def test_chunk_boundaries_survive(proxy: Proxy, fake: FakeOllama) -> None:
    r = await fetch(proxy.port, "POST", "/api/chat",
                    b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":7}}',
                    headers=AUTH)
    assert r.header("content-type") == "application/x-ndjson"
    assert len(r.chunks) == 8 and all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in r.chunks)


async def test_first_token_arrives_before_upstream_finishes(proxy: Proxy, fake: FakeOllama) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request_bytes("POST", "/api/generate",
                               b'{"model":"llama3.2","prompt":"hi","fake_delay":0.05,"options":{"num_predict":20}}',
                               AUTH))
    await reader.readuntil(b"\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"}\n"), 5)
    assert b" tok0" in first
    # The upstream has sent only a few of its 21 lines when the first one is here.
    sent = fake.bytes_sent_last_stream
    assert sent < 5 * len(first)
    writer.close()


@pytest.mark.perf
async def test_client_disconnect_closes_upstream_within_a_second(proxy: Proxy, fake: FakeOllama) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request_bytes("POST", "/api/generate",
                               b'{"model":"llama3.2","prompt":"hi","fake_delay":0.02,"options":{"num_predict":100000}}',
                               AUTH))
    await reader.readuntil(b"tok1")
    hung_up = time.monotonic()
    writer.transport.abort()
    await asyncio.wait_for(fake.stream_aborted.wait(), 1.0)
    assert fake.aborted_at is not None and fake.aborted_at - hung_up < 1.0
    await until(proxy.log_lines, 1.0)
    (entry,) = proxy.log_lines()
    assert entry["outcome"] == "client_gone" and entry["status"] == 499


async def test_slow_reader_keeps_memory_bounded(proxy: Proxy, fake: FakeOllama) -> None:
    total = 64 * 1024 * 1024
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(request_bytes("GET", f"/fake/blob?size={total}", headers=ADMIN))
    await reader.readuntil(b"\r\n\r\n")
    # Stop reading.  The upstream must stall: wait until its progress stops.
    last = await until_still(lambda: fake.bytes_sent_last_stream)
    assert last < total // 2, "nothing pushed back on the upstream"
    (conn,) = proxy.server.connections
    # guardproxy's own buffer for this stream: at most the write high-water mark plus one read.
    assert conn.transport.get_write_buffer_size() <= 64 * 1024 + 256 * 1024
    assert conn.upstream is not None and conn.upstream._paused_by_client
    # Reading again lets the whole body through, byte-exact.
    got = 0
    while got < total:
        data = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert data
        got += len(data)
    writer.close()


async def test_upstream_dying_mid_stream_truncates_visibly(tmp_path) -> None:
    async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"6\r\n{\"a\":1\r\n")
        await writer.drain()
        writer.transport.abort()

    up = await asyncio.start_server(dying, "127.0.0.1", 0)
    p = await start_proxy(up.sockets[0].getsockname()[1], tmp_path)
    try:
        raw = await exchange(p.port, request_bytes("POST", "/api/generate", b"{}", AUTH))
        assert raw.startswith(b"HTTP/1.1 200 OK")
        assert raw.endswith(b"6\r\n{\"a\":1\r\n")  # no invented terminating chunk
        entry = p.log_lines()[-1]
        assert entry["outcome"] == "upstream_error"
    finally:
        await p.server.stop(grace=0)
        up.close()
