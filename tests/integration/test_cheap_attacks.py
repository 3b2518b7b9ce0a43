"""Cheap attacks that used to cost the gate: amplification, slots held for free, lost work,
addresses behind a proxy.  Each test failed on the code before these defences."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import tracemalloc
from pathlib import Path

import pytest
import trustme

from conftest import ADMIN_KEY, KEY, start_proxy
from guardproxy.config.model import Ban, KeyEntry, ServerLimits, Timeouts, Tls, TrafficLimits
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.polling import until
from support.raw_http import fetch, read_response, request_bytes
from support.upstreams import RecordingUpstream, held_upstream, read_request

AUTH = {"X-API-Key": KEY}
LIMITED_KEY = "gp_limited-0123456789abcdefghijklmnopqrstuv"


def limited_keys() -> tuple[KeyEntry, ...]:
    return (KeyEntry("laptop", bytes.fromhex(hash_key(KEY))),
            KeyEntry("app", bytes.fromhex(hash_key(LIMITED_KEY)), models=("llama3.*",)),
            KeyEntry("owner", bytes.fromhex(hash_key(ADMIN_KEY)), admin=True))


def tiny_chunks(payload: bytes, size: int = 1) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + size]), payload[i:i + size])
                    for i in range(0, len(payload), size)) + b"0\r\n\r\n"


async def send_body(port: int, head: bytes, body: bytes, piece: int = 65536) -> bytes:
    """Send a head and a body in pieces, stopping once an answer arrives; the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.read(-1))
    try:
        writer.write(head)
        for i in range(0, len(body), piece):
            if answer.done():
                break
            writer.write(body[i:i + piece])
            try:
                await writer.drain()
            except ConnectionError:
                break
        return await asyncio.wait_for(answer, 10)
    finally:
        writer.close()


CHUNKED_HEAD = b"POST /api/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nX-API-Key: %s\r\n\r\n"


# --- 1, 2: memory and CPU amplification ------------------------------------------------------------

@pytest.mark.parametrize("key", [KEY, LIMITED_KEY, ADMIN_KEY])
async def test_a_body_in_1_byte_chunks_is_refused_early(fake: FakeOllama, tmp_path: Path, key: str) -> None:
    p = await start_proxy(fake.port, tmp_path, keys=limited_keys())
    try:
        body = tiny_chunks(b'{"model":"llama3.2","prompt":"' + b"x" * (2 << 20) + b'"}')
        answer = await send_body(p.port, CHUNKED_HEAD % key.encode(), body)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"].endswith("too many tiny chunks")
        assert fake.requests == []  # refused before any upstream connection
    finally:
        await p.server.stop(grace=0)


async def test_a_buffered_body_costs_a_small_constant_of_its_payload(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path, keys=limited_keys())
    try:
        payload = b'{"model":"llama3.2","stream":false,"prompt":"' + b"x" * (256 << 10) + b'"}'
        body = tiny_chunks(payload, 8)  # the smallest chunks the framing allowances let through
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            answer = await send_body(p.port, CHUNKED_HEAD % LIMITED_KEY.encode(), body, 16384)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert fake.requests[-1].body == payload
        # The body held whole a few times over (as it arrives, as sent, and the fake's own copies),
        # never a Python object per chunk (that was about 88 bytes per payload byte).
        assert peak < 8 * len(payload), f"{peak / len(payload):.1f} bytes of memory per payload byte"
    finally:
        await p.server.stop(grace=0)


async def test_framing_larger_than_its_payload_is_refused(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path, keys=limited_keys())
    try:
        ext = b";" + b"e" * 2000
        body = b"".join(b"1%s\r\nx\r\n" % ext for _ in range(200)) + b"0\r\n\r\n"
        answer = await send_body(p.port, CHUNKED_HEAD % ADMIN_KEY.encode(), body)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"framing larger than its payload" in answer
    finally:
        await p.server.stop(grace=0)


# --- 3: client strings in the log -----------------------------------------------------------------

async def test_long_model_names_are_400_and_client_strings_are_cut_in_the_log(fake: FakeOllama,
                                                                                tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path, keys=limited_keys())
    try:
        body = json.dumps({"model": "llama3." + "a" * 8_000_000, "prompt": "x"}).encode()
        r = await fetch(p.port, "POST", "/api/generate", body, {"X-API-Key": LIMITED_KEY})
        assert r.status == 400 and json.loads(r.body) == {"error": "model name too long"}
        r = await fetch(p.port, "GET", "/api/" + "p" * 6000, headers=AUTH)
        assert r.status == 404
        lines = p.log_lines()
        assert all(len(json.dumps(e)) < 2048 for e in lines)
        assert lines[-1]["path"].endswith("chars, cut]") and len(lines[-1]["path"]) < 320
        assert fake.requests == []
    finally:
        await p.server.stop(grace=0)


# --- 4: queue ghosts ---------------------------------------------------------------------------------


GEN = b'{"model":"llama3.2","prompt":"x"}'


async def test_a_queued_request_whose_client_left_gives_its_place_up(tmp_path: Path) -> None:
    up, release = await held_upstream()
    p = await start_proxy(up.port, tmp_path, limits=TrafficLimits(max_concurrent=1, max_queue=4, queue_timeout=30))
    try:
        holder_r, holder_w = await asyncio.open_connection("127.0.0.1", p.port)
        holder_w.write(request_bytes("POST", "/api/generate", GEN, AUTH))
        await asyncio.wait_for(up.got_request.wait(), 5)
        gate = p.server.hosts.waiting   # the one queue of generations
        for _ in range(4):  # four clients queue, then hang up
            _, w = await asyncio.open_connection("127.0.0.1", p.port)
            w.write(request_bytes("POST", "/api/generate", GEN, AUTH))
            await w.drain()
            await until(lambda: gate.queued >= 1)
            w.close()
            await until(lambda: gate.queued == 0)  # left the queue at once
        live_r, live_w = await asyncio.open_connection("127.0.0.1", p.port)
        live_w.write(request_bytes("POST", "/api/generate", GEN, AUTH))
        await until(lambda: gate.queued == 1)  # queued, not refused
        release.set()
        assert (await asyncio.wait_for(read_response(holder_r), 5)).status == 200
        assert (await asyncio.wait_for(read_response(live_r), 5)).status == 200
        assert len(up.heads) == 2  # the ghosts opened nothing upstream
        statuses = [e["status"] for e in p.log_lines()]
        assert statuses.count(499) == 4 and statuses.count(200) == 2
        holder_w.close()
        live_w.close()
    finally:
        release.set()
        await p.server.stop(grace=0)
        await up.close()


# --- 5: a trickled body holds no slot -------------------------------------------------------------------


# --- 6: TLS handshakes count against the caps -------------------------------------------------------

async def test_idle_tls_handshakes_are_capped_per_address(fake: FakeOllama, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    p = await start_proxy(fake.port, tmp_path, tls=Tls(tmp_path / "c.pem", tmp_path / "k.pem"),
                          server=ServerLimits(max_connections=20, max_connections_per_ip=5),
                          timeouts=Timeouts(header=1.0))
    socks = []
    try:
        for _ in range(50):  # connect, never send a ClientHello
            s = socket.socket()
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", p.port))
            socks.append(s)
        await until(lambda: p.server.per_ip.get("127.0.0.1", 0) == 5)
        assert len(p.server.connections) == 5
        client = ssl.create_default_context()
        ca.configure_trust(client)
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            r, w = await asyncio.open_connection("127.0.0.1", p.port, ssl=client, server_hostname="127.0.0.1")
            w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await r.readexactly(1)
        await until(lambda: not p.server.connections, timeout=5)  # the handshake deadline freed them
        r, w = await asyncio.open_connection("127.0.0.1", p.port, ssl=client, server_hostname="127.0.0.1")
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 200 ")
        w.close()
    finally:
        for s in socks:
            s.close()
        await p.server.stop(grace=0)


# --- 7, 8: lost work -----------------------------------------------------------------------------------

async def test_a_post_on_a_connection_the_upstream_just_closed_is_not_replayed(tmp_path: Path) -> None:
    # The host read the request and dropped the connection: it may have run it.  A read is sent
    # again on a fresh connection; a generation or a blob upload never is (engine/pool.may_send_again).
    served = 0

    async def closes_after_one(reader, writer, up) -> None:  # type: ignore[no-untyped-def]
        nonlocal served
        await read_request(reader, up)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request arrives on a connection it drops

    up = await RecordingUpstream.start(closes_after_one)
    p = await start_proxy(up.port, tmp_path)
    try:
        assert (await fetch(p.port, "GET", "/api/tags", headers=AUTH)).status == 200
        r = await fetch(p.port, "POST", "/api/generate", GEN, AUTH)
        assert r.status == 502 and GEN not in up.bodies
        assert (await fetch(p.port, "GET", "/api/tags", headers=AUTH)).status == 200   # a fresh connection
        assert (await fetch(p.port, "GET", "/api/tags", headers=AUTH)).status == 200   # a read: sent again
        assert (await fetch(p.port, "POST", "/api/blobs/sha256:" + "c" * 64, b"small blob",
                            {"X-API-Key": ADMIN_KEY})).status == 502  # a streamed body: not replayed either
        assert served == 3
    finally:
        await p.server.stop(grace=0)
        await up.close()


async def test_token_counts_survive_an_upstream_that_writes_byte_by_byte(tmp_path: Path) -> None:
    final = b'{"model":"llama3.2","response":"","done":true,"prompt_eval_count":26,"eval_count":290}\n'

    async def bytewise(reader, writer, up) -> None:  # type: ignore[no-untyped-def]
        await read_request(reader, up)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        line = b'{"model":"llama3.2","response":" hi","done":false}\n'
        for data in (b"%x\r\n%s\r\n" % (len(line), line), b"%x\r\n%s\r\n0\r\n\r\n" % (len(final), final)):
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)

    up = await RecordingUpstream.start(bytewise)
    p = await start_proxy(up.port, tmp_path)
    try:
        r = await fetch(p.port, "POST", "/api/generate", GEN, AUTH)
        assert r.status == 200
        entry = p.log_lines()[-1]
        assert (entry["prompt_tokens"], entry["completion_tokens"]) == (26, 290)
    finally:
        await p.server.stop(grace=0)
        await up.close()


# --- 9: the one header a trusted proxy's address is read from -----------------------------------------

@pytest.mark.parametrize("header,expected", [("forwarded", "198.51.100.4"), ("x-forwarded-for", "6.6.6.6"),
                                             ("x-real-ip", "203.0.113.9")])
async def test_only_the_configured_forwarding_header_names_the_client(fake: FakeOllama, tmp_path: Path,
                                                                     header: str, expected: str) -> None:
    p = await start_proxy(fake.port, tmp_path, limits=TrafficLimits(trusted_proxies=("127.0.0.0/8",),
                                                                     client_address_header=header),
                          ban=Ban(after_failures=3))
    try:
        spoof = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=198.51.100.4", "X-Real-IP": "203.0.113.9"}
        for _ in range(3):
            await fetch(p.port, "GET", "/api/tags", headers={**spoof, "X-API-Key": "wrong-key-0123456789"})
        assert {e["client"] for e in p.log_lines()} == {expected}
        # The banned address is the configured one; a client naming another address is someone else.
        assert (await fetch(p.port, "GET", "/api/tags", headers={**spoof, **AUTH})).status == 429
        other = {k: v.replace(expected, "192.0.2.77") for k, v in spoof.items()}
        assert (await fetch(p.port, "GET", "/api/tags", headers={**other, **AUTH})).status == 200
    finally:
        await p.server.stop(grace=0)


# --- bodies on requests guardproxy answers itself ------------------------------------------------

@pytest.mark.parametrize(("path", "key"), [("/health", KEY), ("/ready", KEY), ("/api/tags", LIMITED_KEY)])
async def test_a_body_guardproxy_never_reads_is_never_taken_for_the_next_request(
        fake: FakeOllama, tmp_path: Path, path: str, key: str) -> None:
    # Behind a proxy that reuses one connection for many clients, a body read as a request
    # would answer twice and shift every later answer to the wrong client.
    p = await start_proxy(fake.port, tmp_path, keys=limited_keys())
    try:
        inner = request_bytes("GET", "/api/version", b"", AUTH)
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(request_bytes("GET", path, inner, {"X-API-Key": key}))
        r = await asyncio.wait_for(read_response(reader), 5)
        assert r.status == 200 and r.header("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""   # closed: the body was not parsed
        assert all(q.target != "/api/version" and q.body == b"" for q in fake.requests)
        writer.close()
    finally:
        await p.server.stop(grace=0)
