"""A host that attacks the gate: late bytes after a bodyless answer, floods of interim heads.

What one client's exchange leaves on a connection must never reach another client,
and nothing a host sends may hold an exchange past its deadlines.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from conftest import KEY, start_proxy
from guardproxy.config.model import KeyEntry, Routing
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from guardproxy.testing.fake_ollama.shapes import listing_bodies
from support.hosts import Fakes, fakes, gate, host  # noqa: F401 (fakes: a fixture)
from support.raw_http import read_response, request_bytes
from support.upstreams import RecordingUpstream, read_request

AUTH = {"X-API-Key": KEY}
EVIL = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{"leaked":"evil"}'
HONEST = b'{"version":"0.33.0"}'
HONEST_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (len(HONEST), HONEST))
# The bodyless answers: (the request that gets it, the head the host sends)
BODYLESS = {
    "head": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"),
    "204": ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    "304": ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
}
NEXT = "next"  # the late bytes come once the next request on that connection has arrived


def late_bytes_host(head: bytes, delay: float | str):
    """A host that answers GET /api/version honestly, and `/` with `head` followed, `delay` later,
    by bytes shaped as a whole response."""
    async def script(reader, writer, up) -> None:  # type: ignore[no-untyped-def]
        while True:
            req = await read_request(reader, up)
            if not req.split(b" ", 2)[1] == b"/":
                writer.write(HONEST_RESPONSE)
                continue
            writer.write(head)
            await writer.drain()
            if delay == NEXT:
                await read_request(reader, up)  # the next request, whoever sent it
                writer.write(EVIL + HONEST_RESPONSE)
            else:
                await asyncio.sleep(delay)  # (the host's behaviour, not a synchronisation)
                writer.write(EVIL)
    return script


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "separate-clients"])
@pytest.mark.parametrize("delay", [0, 0.003, 0.03, NEXT])
@pytest.mark.parametrize("kind", list(BODYLESS))
async def test_late_bytes_after_a_bodyless_answer_reach_no_client(tmp_path: Path, kind: str, delay: float | str,
                                                                  pipelined: bool) -> None:
    method, head = BODYLESS[kind]
    up = await RecordingUpstream.start(late_bytes_host(head, delay))
    p = await start_proxy(up.port, tmp_path)
    try:
        for _ in range(3):
            first = request_bytes(method, "/", headers=AUTH)
            second = request_bytes("GET", "/api/version", headers=AUTH)
            r1, w1 = await asyncio.open_connection("127.0.0.1", p.port)
            if pipelined:
                w1.write(first + second)
                r2, w2 = r1, w1
            else:
                w1.write(first)
            resp = await asyncio.wait_for(read_response(r1, head_only=True), 5)
            assert resp.status == {"head": 200, "204": 204, "304": 304}[kind]
            if not pipelined:
                r2, w2 = await asyncio.open_connection("127.0.0.1", p.port)
                w2.write(second)
            answer = await asyncio.wait_for(read_response(r2), 5)
            assert answer.status == 200 and answer.body == HONEST, answer.body
            w1.close()
            w2.close()
    finally:
        await p.server.stop(grace=0)
        await up.close()


# --- interim heads ------------------------------------------------------------------------------

def interim_host(interim: bytes, count: int, *, period: float = 0.0):
    """A host that answers with `count` interim heads (all in one write, or one per `period`), then a 200."""
    async def script(reader, writer, up) -> None:  # type: ignore[no-untyped-def]
        while True:
            await read_request(reader, up)
            if period:
                for _ in range(count):
                    writer.write(interim)
                    await asyncio.sleep(period)  # (the host's pace)
                writer.write(HONEST_RESPONSE)
            else:
                writer.write(interim * count + HONEST_RESPONSE)
            await writer.drain()
    return script


async def _version(port: int) -> tuple[int, bytes, float]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes("GET", "/api/version", headers=AUTH))
        resp = await asyncio.wait_for(read_response(reader), 5)
        return resp.status, resp.body, time.monotonic() - started
    finally:
        writer.close()


async def test_100_continue_trickled_is_capped_too(tmp_path: Path) -> None:
    up = await RecordingUpstream.start(interim_host(b"HTTP/1.1 100 Continue\r\n\r\n", 11, period=0.01))
    p = await start_proxy(up.port, tmp_path)
    try:
        assert (await _version(p.port))[0] == 502
        assert "interim" in p.log_lines()[-1]["error"]
    finally:
        await p.server.stop(grace=0)
        await up.close()


@pytest.mark.parametrize("count", [1, 10, 11, 20_000])
@pytest.mark.parametrize("interim", [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 102 Processing\r\n\r\n",
                                     b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"],
                         ids=["100", "102", "103"])
async def test_interim_heads_are_capped(tmp_path: Path, interim: bytes, count: int) -> None:
    up = await RecordingUpstream.start(interim_host(interim, count))
    p = await start_proxy(up.port, tmp_path)
    try:
        status, body, _ = await _version(p.port)
        if count <= 10:
            assert (status, body) == (200, HONEST)
        else:
            assert status == 502 and "error" in json.loads(body)
            entry = p.log_lines()[-1]
            assert entry["status"] == 502 and "interim" in entry["error"], entry
        # The gate is still well: the next request is answered.
        assert (await _version(p.port))[0] == (200 if count <= 10 else 502)
    finally:
        await p.server.stop(grace=0)
        await up.close()


# --- model lists: bounded reading, a failed check, no stalled loop -----------------------------

DEEP = b'{"models":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
MANY = b'{"models":[' + b",".join(b'{"name":"m%06d:latest","model":"m%06d:latest","size":1,"x":1}' % (i, i)
                                  for i in range(110_000)) + b"]}"   # 7 MB, under the 8 MiB cap


async def test_one_host_with_an_unreadable_list_breaks_no_merged_listing(fakes: Fakes, tmp_path: Path, caplog) -> None:
    # Over real sockets, a 7 MB list; every other shape of unreadable list, round by round on a virtual
    # clock: tests/unit/engine/test_virtual_hosts.py.
    bad, which = MANY, "both"
    good = await fakes.start(0, models=["llama3.2"], loaded=["llama3.2"])
    evil = await fakes.start(1, models=["qwen3"], loaded=["qwen3"])
    evil.tags_body = bad
    if which == "both":
        evil.ps_body = bad
    caplog.set_level("INFO", logger="guardproxy")
    async with gate(tmp_path, (host(0, good), host(1, evil)), interval=0.1) as proxy:
        # The bad host's checks fail: it goes down (and stays down), the good one stays up.
        await asyncio.wait_for(proxy.server.health.next_round(3), 10)
        for _ in range(4):
            await asyncio.wait_for(proxy.server.health.next_round(), 10)
            assert not proxy.server.hosts.members["gpu-b"].host.up
        ready = await _get(proxy.port, "/ready", {})
        assert (ready.status, json.loads(ready.body)) == (200, {"upstreams_up": 1})
        tags = await _get(proxy.port, "/api/tags", AUTH)
        assert tags.status == 200
        assert [m["name"] for m in json.loads(tags.body)["models"]] == ["llama3.2"]
        ps = await _get(proxy.port, "/api/ps", AUTH)
        assert ps.status == 200
        assert [(m["name"], m["upstream"]) for m in json.loads(ps.body)["models"]] == [("llama3.2", "gpu-a")]
    lines = [r for r in caplog.records if "gpu-b" in r.getMessage() and "cannot read" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]   # one line, not one per round
    assert not any(r.exc_info for r in caplog.records)                   # and no traceback anywhere


@pytest.mark.parametrize("bad", [DEEP, MANY, b'{"models":{}}'], ids=["deep", "many", "not-a-list"])
@pytest.mark.parametrize("path", ["/api/tags", "/api/ps", "/v1/models"])
async def test_a_key_with_a_model_list_gets_an_answer_from_one_bad_host(tmp_path: Path, bad: bytes,
                                                                        path: str) -> None:
    fake = await FakeOllama.start()
    fake.ps_body = fake.tags_body = fake.v1_models_body = bad.replace(b'"models"', b'"data"') \
        if path == "/v1/models" else bad
    keys = (KeyEntry("laptop", bytes.fromhex(hash_key(KEY)), models=("llama3.2",)),)
    p = await start_proxy(fake.port, tmp_path, keys=keys)
    try:
        resp = await _get(p.port, path, AUTH)
        assert resp.status == 502 and len(resp.body) < 200
        assert "error" in json.loads(resp.body)
        # An honest list still reads as before.
        fake.tags_body, fake.ps_body, fake.v1_models_body = listing_bodies(None, None)
        resp = await _get(p.port, path, AUTH)
        field = "data" if path == "/v1/models" else "models"
        assert resp.status == 200
        names = {m.get("id") or m.get("name") for m in json.loads(resp.body)[field]}
        assert names <= {"llama3.2:latest", "llama3.2"} and (path == "/api/ps" or names)
    finally:
        await p.server.stop(grace=0)
        await fake.close()


async def _get(port: int, target: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes("GET", target, headers=headers))
        return await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()


@pytest.mark.perf
async def test_a_huge_list_never_stalls_the_loop(tmp_path: Path) -> None:
    # 110,000 entries in 7 MB, read every 100 ms: before, each round held the loop for
    # hundreds of milliseconds; now the list is refused after its 4,096th entry, read a slice at a time.
    fake = await FakeOllama.start()
    fake.ps_body = MANY
    p = await start_proxy(fake.port, tmp_path, routing=Routing(health_interval=0.1))
    try:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        rounds = p.server.health.rounds
        while p.server.health.rounds < rounds + 5:
            t = loop.time()
            await asyncio.sleep(0.001)
            gaps.append(loop.time() - t)
        gaps.sort()
        # (generous for a loaded machine: main took 400+ ms per round; benchmarks/attacks.py measures)
        assert gaps[-1] < 0.15, gaps[-5:]
    finally:
        await p.server.stop(grace=0)
        await fake.close()


# --- pool hygiene -------------------------------------------------------------------------------

async def test_a_pooled_upstream_connection_has_keepalive_probes(tmp_path: Path) -> None:
    # (its expiry after upstream_idle: tests/unit/engine/test_virtual_forwarding.py)
    async def script(reader, writer, up) -> None:  # type: ignore[no-untyped-def]
        while True:
            await read_request(reader, up)
            writer.write(HONEST_RESPONSE)
    up = await RecordingUpstream.start(script)
    p = await start_proxy(up.port, tmp_path)
    try:
        assert (await _version(p.port))[0] == 200
        pool = p.server.hosts.members[next(iter(p.server.hosts.members))].pool
        [conn] = pool._idle
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        await p.server.stop(grace=0)
        await up.close()


def test_the_readability_check_sees_bytes_and_an_eof() -> None:
    from guardproxy.engine.pool import readable
    a, b = socket.socketpair()
    try:
        assert not readable(a.fileno())
        b.send(b"x")
        assert readable(a.fileno())
        a.recv(1)
        assert not readable(a.fileno())
        b.close()
        assert readable(a.fileno())
    finally:
        a.close()


@pytest.mark.parametrize("method, target, resent", [("GET", "/api/version", True),
                                                     ("POST", "/api/show", True),       # a read
                                                     ("POST", "/api/generate", False),
                                                     ("POST", "/api/embed", False)])
async def test_a_request_on_a_pooled_connection_that_dies_unanswered_is_resent_only_if_a_read(
        tmp_path: Path, method: str, target: str, resent: bool) -> None:
    # The host reads the second request on its first connection, then closes it without a byte.
    async def script(reader, writer, up) -> None:  # type: ignore[no-untyped-def]
        first = up.connections == 1
        await read_request(reader, up)
        writer.write(HONEST_RESPONSE)
        await writer.drain()
        await read_request(reader, up)
        if first:
            return  # (closed by RecordingUpstream)
        writer.write(HONEST_RESPONSE)
        await writer.drain()
    up = await RecordingUpstream.start(script)
    p = await start_proxy(up.port, tmp_path)
    try:
        assert (await _version(p.port))[0] == 200
        body = json.dumps({"model": "llama3.2", "prompt": "hi", "stream": False}).encode() \
            if method == "POST" else None
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(request_bytes(method, target, body, AUTH))
        resp = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        sent = [h for h in up.heads if h.startswith(method.encode() + b" " + target.encode())]
        if resent:
            assert resp.status == 200 and len(sent) == (3 if method == "GET" else 2)  # (the first was a GET)
        else:
            assert resp.status == 502 and len(sent) == 1   # it may have run: never twice
    finally:
        await p.server.stop(grace=0)
        await up.close()


@pytest.mark.parametrize("bad", [DEEP, MANY], ids=["deep", "many"])
async def test_doctor_reads_a_hostile_hosts_list_without_a_traceback(bad: bytes) -> None:
    from guardproxy.config.model import Upstream
    from guardproxy.ops.hostcheck import check_models
    fake = await FakeOllama.start()
    fake.tags_body = bad
    try:
        findings = await asyncio.to_thread(check_models, Upstream("127.0.0.1", fake.port))
        assert len(findings) == 1 and "without a model list" in findings[0].text
    finally:
        await fake.close()
