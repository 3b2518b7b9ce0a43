"""Strict head rules, as pure functions over byte literals and random heads."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardproxy.wire.errors import GuardError
from guardproxy.wire.heads import build_upstream_head, parse_request_head
from guardproxy.wire.strict import MAX_HEAD, HeadScanner, check_head

GOOD = b"POST /api/chat?x=1 HTTP/1.1\r\nHost: gpu.example:11435\r\nX-API-Key: k\r\nContent-Length: 2\r\n\r\n"


def scan_bytewise(data: bytes, max_headers: int = 100) -> int:
    scanner = HeadScanner(max_headers)
    for i in range(1, len(data) + 1):
        end = scanner.feed(data[:i])
        if end >= 0:
            return end
    return -1


def test_scanner_finds_the_end_whatever_the_segmentation() -> None:
    assert scan_bytewise(GOOD + b"{}") == len(GOOD)
    assert HeadScanner().feed(GOOD + b"{}") == len(GOOD)


def test_scanner_refuses_bare_lf_as_soon_as_it_arrives() -> None:
    scanner = HeadScanner()
    with pytest.raises(GuardError) as e:
        scanner.feed(b"GET / HTTP/1.1\r\nHost: a\n")  # no CRLF CRLF yet: no waiting for one
    assert e.value.status == 400


def test_scanner_refuses_long_request_line_before_its_end() -> None:
    with pytest.raises(GuardError) as e:
        HeadScanner().feed(b"GET /" + b"a" * 9000)
    assert e.value.status == 414


def test_scanner_counts_fields_before_the_head_ends() -> None:
    scanner = HeadScanner(max_headers=3)
    with pytest.raises(GuardError) as e:
        scanner.feed(b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 4)
    assert e.value.status == 431


def test_scanner_caps_the_head_in_any_segmentation() -> None:
    data = b"GET / HTTP/1.1\r\nX: " + b"v" * MAX_HEAD
    with pytest.raises(GuardError) as e:
        scan_bytewise(data)
    assert e.value.status == 431


def test_scanner_skips_leading_empty_lines() -> None:
    scanner = HeadScanner()
    assert scanner.feed(b"\r\n\r\n" + GOOD) == 4 + len(GOOD) and scanner.start == 4


def test_facts() -> None:
    facts = check_head(GOOD)
    assert (facts.content_length, facts.chunked) == (2, False)
    facts = check_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n")
    assert (facts.content_length, facts.chunked) == (None, True)


# --- property: random and mutated heads -----------------------------------------------------

_REFUSALS = {400, 405, 413, 414, 431, 501, 505}

_lines = st.sampled_from([
    b"GET /api/tags HTTP/1.1", b"POST /api/generate HTTP/1.1", b"OPTIONS * HTTP/1.1", b"HEAD / HTTP/1.0",
    b"PUT /x HTTP/1.1", b"GET http://a/ HTTP/1.1", b"GET / HTTP/2.0", b"DELETE /api/delete?x=%41 HTTP/1.1",
])
_fields = st.sampled_from([
    b"Host: a", b"Host: 127.0.0.1:11435", b"Content-Length: 5", b"Content-Length: 0", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip", b"X-API-Key: k", b"Authorization: Bearer k", b"Connection: close, X-A",
    b"X-A: b", b"Expect: 100-continue", b"Upgrade: h2c", b" folded", b"X_Y: z", b"Trailer: X",
])
_noise = st.sampled_from([b"\r", b"\n", b"\x00", b" ", b"\t", b":", b",", b"\x7f", b"\xff", b"#", b"%", b"\r\n"])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    parts = [draw(_lines)] + draw(st.lists(_fields, max_size=8))
    data = bytearray(b"\r\n".join(parts) + b"\r\n\r\n")
    for _ in range(draw(st.integers(0, 3))):  # mutations: insert, delete or replace one byte
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "delete":
            del data[pos]
        else:
            byte = draw(_noise)
            data[pos:pos + (op == "replace")] = byte
    return bytes(data)


def _well_formed(head: bytes) -> None:
    """What guardproxy sends upstream: CRLF lines, one framing header, parseable by h11."""
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line
    lower = head.lower()
    assert lower.count(b"\r\ncontent-length:") + lower.count(b"\r\ntransfer-encoding:") <= 1
    for banned in (b"x-api-key", b"authorization", b"upgrade", b"expect", b"connection"):
        assert b"\r\n" + banned + b":" not in lower
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    assert isinstance(conn.next_event(), h11.Request)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads())
def test_random_heads_are_refused_with_4xx_5xx_or_rebuilt_well_formed(data: bytes) -> None:
    scanner = HeadScanner()
    try:
        end = scanner.feed(data)
        if end < 0:
            return  # the scanner waits for more: the head deadline ends it
        req = parse_request_head(data[scanner.start:end])
    except GuardError as err:
        assert err.status in _REFUSALS and err.close
        return
    _well_formed(build_upstream_head(req, b"127.0.0.1:11434", b"203.0.113.7", b"http", req.request_id or b"r1"))
