"""Requests guardproxy accepts only as its own: re-framed bodies, hop-by-hop headers dropped, Expect decided from the head, mutated heads always answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import Proxy, start_proxy
from guardproxy.wire.strict import HeadScanner, check_head
from support.raw_http import without_request_id
from support.upstreams import RecordingUpstream
from support.attack_cases import K, ADMIN_K, H, MAX_BODY, get, post, CHUNKED, gate, send  # noqa: F401 (gate: a fixture)


# --- accepted, but what reaches the upstream is guardproxy's own head ------------------------

def rebuilt(port: int, request_line: bytes, kept: bytes, framing: bytes = b"") -> bytes:
    return (request_line + b"\r\nHost: 127.0.0.1:%d\r\n" % port + kept + framing
            + b"X-Forwarded-Host: a\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
            b"X-Real-IP: 127.0.0.1\r\n\r\n")


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "bytewise"])
async def test_chunked_body_is_reframed_extensions_and_trailers_dropped(
        gate: Proxy, upstream: RecordingUpstream, bytewise: bool) -> None:
    # llhttp transfer-encoding.md: Chunk extensions / Trailing headers; h11
    # accepts a Content-Length trailer, which must never reach the upstream.
    body = (b"5;ilovew3;somuchlove=aretheseparametersfor;another=withvalue\r\nhello\r\n"
            b"6;blahblah;blah\r\n world\r\n000\r\nVary: *\r\nContent-Length: 0\r\n\r\n")
    raw = post(CHUNKED + b"Connection: close\r\n", body, ADMIN_K)  # streamed: nothing needs its model
    answer = await send(gate.port, raw, bytewise)
    assert answer.startswith(b"HTTP/1.1 200 ")
    (head,) = upstream.heads
    assert without_request_id(head) == rebuilt(upstream.port, b"POST /api/generate HTTP/1.1", b"", b"Transfer-Encoding: chunked\r\n")
    (wire_body,) = upstream.bodies
    assert wire_body.endswith(b"0\r\n\r\n") and b";" not in wire_body and b"Vary" not in wire_body
    assert _dechunk(wire_body) == b"hello world"


def _dechunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        nl = data.index(b"\r\n", pos)
        size = int(data[pos:nl], 16)
        if size == 0:
            return out
        out += data[nl + 2:nl + 2 + size]
        pos = nl + 4 + size


async def test_upgrade_and_hop_by_hop_never_forwarded(gate: Proxy, upstream: RecordingUpstream) -> None:
    raw = get(fields=H + K + b"Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
              b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nKeep-Alive: timeout=5\r\n"
              b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Kept: yes\r\n")
    answer = await send(gate.port, raw, False)
    assert answer.startswith(b"HTTP/1.1 200 ")
    (head,) = upstream.heads
    assert without_request_id(head) == rebuilt(upstream.port, b"GET /api/tags HTTP/1.1", b"X-Kept: yes\r\n")


async def test_leading_empty_lines_are_ignored(gate: Proxy, upstream: RecordingUpstream) -> None:
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line.
    answer = await send(gate.port, b"\r\n\r\n" + get(fields=H + K + b"Connection: close\r\n"), True)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert [without_request_id(h) for h in upstream.heads] == [rebuilt(upstream.port, b"GET /api/tags HTTP/1.1", b"")]


async def test_content_length_rewritten_as_guardproxy_writes_it(gate: Proxy, upstream: RecordingUpstream) -> None:
    body = b'{"model":"a"}'
    raw = (b"POST /api/generate HTTP/1.1\r\ncontent-length:   13  \r\n" + H + K + b"Connection: close\r\n\r\n" + body)
    answer = await send(gate.port, raw, False)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert [without_request_id(h) for h in upstream.heads] == [rebuilt(upstream.port, b"POST /api/generate HTTP/1.1", b"", b"Content-Length: 13\r\n")]
    assert upstream.bodies == [body]


async def test_options_asterisk_is_allowed_to_admin_keys_only(gate: Proxy, upstream: RecordingUpstream) -> None:
    # Not a route Ollama has: an ordinary key gets 404 and nothing is forwarded.
    answer = await send(gate.port, get(b"OPTIONS * HTTP/1.1", H + K + b"Connection: close\r\n"), False)
    assert answer.startswith(b"HTTP/1.1 404 ") and upstream.saw_nothing
    answer = await send(gate.port, get(b"OPTIONS * HTTP/1.1", H + ADMIN_K + b"Connection: close\r\n"), False)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert [without_request_id(h) for h in upstream.heads] == [rebuilt(upstream.port, b"OPTIONS * HTTP/1.1", b"")]


# --- Expect: 100-continue is decided from the head ------------------------------------------

@pytest.mark.parametrize("fields,status", [
    (b"Content-Length: 10\r\n", 401),                       # no key: refused, no 100
    (K + b"Content-Length: %d\r\n" % (MAX_BODY + 1), 413),  # too large: refused, no 100
])
async def test_expect_continue_refusal_sends_no_100(gate: Proxy, upstream: RecordingUpstream,
                                                    fields: bytes, status: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
    writer.write(b"POST /api/generate HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\n" + fields + b"\r\n")
    answer = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"100 Continue" not in answer and b"Connection: close" in answer
    assert upstream.saw_nothing


# --- mutated heads over real sockets: an answer every time, never a hang ----------------------

def _mutations(seed: int, count: int) -> list[bytes]:
    import random
    rng = random.Random(seed)
    base = [get(), post(b"Content-Length: 2\r\n", b"{}"), post(CHUNKED, b"2\r\n{}\r\n0\r\n\r\n"),
            get(b"OPTIONS * HTTP/1.1"), b"GET /health HTTP/1.0\r\n\r\n"]
    noise = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b",", b"\x7f", b"\xff", b"#", b"\r\n", b"0", b"chunked"]
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            op = rng.choice(("insert", "delete", "replace"))
            if op == "delete":
                del data[pos]
            else:
                data[pos:pos + (op == "replace")] = rng.choice(noise)
        out.append(bytes(data) + b"\r\n\r\n")  # ends every head that is still open
    return out


async def test_mutated_heads_get_an_answer_and_nothing_malformed_goes_upstream(
        upstream: RecordingUpstream, tmp_path: Path) -> None:
    from guardproxy.config.model import ServerLimits, Timeouts
    p = await start_proxy(upstream.port, tmp_path, server=ServerLimits(max_body=MAX_BODY),
                          timeouts=Timeouts(header=0.5, body=0.5, keepalive=0.5))
    try:
        cases = _mutations(1234, 150)
        answers = await asyncio.gather(*(send(p.port, raw, False, timeout=5) for raw in cases))
        for raw, answer in zip(cases, answers):
            assert answer.startswith(b"HTTP/1.1 "), (raw, answer)
            status = int(answer[9:12])
            assert status in (200, 400, 401, 404, 405, 408, 413, 414, 431, 501, 505), (raw, answer)
        assert upstream.heads, "some mutations are harmless and must still be served"
        for head in upstream.heads:
            # Every head that went upstream is one guardproxy wrote: it passes the strict checks.
            assert HeadScanner().feed(head) == len(head)
            check_head(head)
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()
