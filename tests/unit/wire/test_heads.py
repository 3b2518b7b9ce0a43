"""Request heads in, upstream heads out; response heads checked."""

from __future__ import annotations

import pytest

from guardproxy.wire.errors import BadRequest
from guardproxy.wire.heads import BadUpstreamHead, build_upstream_head, parse_request_head, parse_response_head


def test_upstream_head_drops_secrets_and_hop_by_hop() -> None:
    req = parse_request_head(
        b"POST /api/chat?x=1 HTTP/1.1\r\nHost: public.example\r\nX-API-Key: secret\r\n"
        b"Authorization: Bearer secret\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\nX-Request-Id: client-1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n")
    head = build_upstream_head(req, b"127.0.0.1:11434", b"10.0.0.9", b"http", b"5f1d0c")
    assert head == (b"POST /api/chat?x=1 HTTP/1.1\r\nHost: 127.0.0.1:11434\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                    b"X-Forwarded-Host: public.example\r\nX-Forwarded-For: 10.0.0.9\r\n"
                    b"X-Forwarded-Proto: http\r\nX-Real-IP: 10.0.0.9\r\nX-Request-Id: 5f1d0c\r\n\r\n")


def test_http10_request_keeps_its_version_upstream() -> None:
    req = parse_request_head(b"GET / HTTP/1.0\r\n\r\n")
    assert not req.keep_alive
    assert build_upstream_head(req, b"u:1", b"c", b"http", b"r").startswith(b"GET / HTTP/1.0\r\n")


@pytest.mark.parametrize("value,kept", [
    (b"abc", True), (b"A-Z_a.z-09", True), (b"x" * 64, True),
    (b"x" * 65, False), (b"", False), (b"a b", False), (b"a/b", False), (b"a\"b", False), (b"caf\xc3\xa9", False),
    (b"{{7*7}}", False), (b"a,b", False),
])
def test_a_clients_request_id_is_kept_only_when_safe(value: bytes, kept: bool) -> None:
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: " + value + b"\r\n\r\n")
    assert req.request_id == (value if kept else None)
    # Framed again for a body read whole, or with a header left out, it keeps its ID.
    assert req.with_length(0).request_id == req.without(b"host").request_id == req.request_id


def test_the_first_request_id_counts_and_the_clients_never_reach_the_upstream() -> None:
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nx-request-id: bad id\r\nX-Request-Id: good\r\n\r\n")
    assert req.request_id is None
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: one\r\nX-Request-Id: two\r\n\r\n")
    assert req.request_id == b"one"
    head = build_upstream_head(req, b"u:1", b"c", b"http", b"one")
    assert head.lower().count(b"x-request-id") == 1 and head.endswith(b"X-Request-Id: one\r\n\r\n")


def test_the_upstreams_request_id_gives_way_to_guardproxys() -> None:
    rh = parse_response_head(b"HTTP/1.1 200 OK\r\nX-Request-Id: from-ollama\r\nContent-Length: 0\r\n\r\n",
                             head_request=False, client_keep_alive=True, extra=b"X-Request-Id: ours\r\n")
    assert rh.head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Request-Id: ours\r\n\r\n"


def test_keep_alive_rules() -> None:
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive
    assert not parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive


def test_malformed_request_is_400() -> None:
    with pytest.raises(BadRequest):
        parse_request_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")


def test_response_head_rebuilt_for_client() -> None:
    rh = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                             b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
                             head_request=False, client_keep_alive=True)
    assert rh.chunked and not rh.close_client and rh.upstream_keep_alive
    assert rh.head == b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_close_delimited_response_closes_client() -> None:
    rh = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n", head_request=False, client_keep_alive=True)
    assert rh.close_client and not rh.upstream_keep_alive and rh.head.endswith(b"Connection: close\r\n\r\n")


def test_no_body_responses() -> None:
    assert parse_response_head(b"HTTP/1.1 204 No Content\r\n\r\n", head_request=False, client_keep_alive=True).no_body
    rh = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head_request=True, client_keep_alive=True)
    assert rh.no_body and not rh.close_client


@pytest.mark.parametrize("head", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
])
def test_contradictory_or_garbage_response_heads(head: bytes) -> None:
    with pytest.raises(BadUpstreamHead):
        parse_response_head(head, head_request=False, client_keep_alive=True)


def test_upstream_head_has_guardproxys_framing_only() -> None:
    req = parse_request_head(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n")
    head = build_upstream_head(req, b"127.0.0.1:11434", b"10.0.0.1", b"https", b"r")
    assert head.count(b"Transfer-Encoding") == 1 and b"Content-Length" not in head
    assert b"X-Forwarded-Proto: https\r\n" in head and b"X-Kept: 1\r\n" in head


def test_fields_the_client_names_in_connection_are_not_forwarded() -> None:
    req = parse_request_head(b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: X-Hop, keep-alive\r\nconnection: x-other\r\n"
                             b"X-Hop: 1\r\nX-Other: 2\r\nX-Kept: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    for r in (req, req.with_length(5), req.without(b"x-kept")):  # the body read whole, or a field dropped
        head = build_upstream_head(r, b"127.0.0.1:11434", b"10.0.0.1", b"http", b"r").lower()
        assert b"x-hop" not in head and b"x-other" not in head and b"connection" not in head
    assert b"X-Kept: 3\r\n" in build_upstream_head(req.with_length(5), b"h", b"10.0.0.1", b"http", b"r")


@pytest.mark.parametrize("head", [
    b"GET /api/tags HTTP/1.1\r\nHost: a\r\nX-API-Key: k\r\nUser-Agent: wrk\r\n\r\n",
    b"POST /api/chat?x=1 HTTP/1.0\r\nHost: a:1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: [::1]:8\r\nX-Empty:\r\nX-Tab:\tv \r\n\r\n",
])
def test_h11s_reader_and_its_connection_parse_alike(head: bytes) -> None:
    # The request path uses h11's reader without its Connection; both must give the same head.
    from guardproxy.wire import heads
    assert heads._h11_parse(head) == heads._h11_public(head)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_heads_of_any_bytes_like_type_parse_the_same(kind: type) -> None:
    # Windows' proactor loop reads into a bytearray; a loop may pass a memoryview.
    raw = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-Request-Id: up\r\n"
           b"Content-Type: application/json\r\n\r\n")
    rh = parse_response_head(kind(raw), head_request=False, client_keep_alive=True)
    assert rh == parse_response_head(raw, head_request=False, client_keep_alive=True)
    assert type(rh.head) is bytes and rh.content_length == 2 and rh.upstream_keep_alive
    req = b"GET /api/tags HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Request-Id: abc\r\n\r\n"
    parsed = parse_request_head(kind(req))
    assert parsed == parse_request_head(req)
    assert all(type(part) is bytes for h in parsed.headers for part in h)
