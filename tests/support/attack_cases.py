"""Helpers shared by test_attacks.py and test_attacks_accepted.py."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import AsyncIterator, NamedTuple

import pytest

from conftest import ADMIN_KEY, KEY, Proxy, start_proxy
from support.upstreams import RecordingUpstream

K = b"X-API-Key: " + KEY.encode() + b"\r\n"
ADMIN_K = b"X-API-Key: " + ADMIN_KEY.encode() + b"\r\n"  # no model to check: bodies stream
H = b"Host: a\r\n"
MAX_BODY = 4096  # the suite's proxy has a small body limit so 413s are cheap to provoke


class Case(NamedTuple):
    id: str
    raw: bytes
    status: int


def get(line: bytes = b"GET /api/tags HTTP/1.1", fields: bytes = H + K) -> bytes:
    return line + b"\r\n" + fields + b"\r\n"


def post(fields: bytes, body: bytes = b"", key: bytes = K) -> bytes:
    return b"POST /api/generate HTTP/1.1\r\n" + H + key + fields + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"

# --- refused from the head alone: the upstream sees nothing -------------------------------

HEAD_CASES = [
    # Request line and version (RFC 9112 2.3, 3).
    Case("version-http2", get(b"GET /api/tags HTTP/2.0"), 505),        # h11 accepts HTTP/2.0
    Case("version-1.2", get(b"GET /api/tags HTTP/1.2"), 505),
    Case("version-0.9", get(b"GET /api/tags HTTP/0.9"), 505),
    Case("version-5.6", get(b"GET /api/tags HTTP/5.6"), 505),          # llhttp invalid.md: Invalid HTTP version
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    Case("version-lowercase", get(b"GET /api/tags http/1.1"), 400),
    Case("version-ihttp", get(b"GET /api/tags IHTTP/1.0"), 400),       # llhttp invalid.md: ICE protocol, but not really
    Case("version-ice", get(b"GET /api/tags ICE/1.0"), 400),           # llhttp invalid.md: ICE protocol and GET method
    Case("version-two-digits", get(b"GET /api/tags HTTP/11"), 400),
    Case("version-missing", get(b"GET /api/tags"), 400),               # HTTP/0.9 simple request
    Case("request-line-trailing-space", get(b"GET /api/tags HTTP/1.1 "), 400),
    Case("request-line-double-space", get(b"GET  /api/tags HTTP/1.1"), 400),  # RFC 9112 3: single SP
    Case("request-line-tabs", get(b"GET\t/api/tags\tHTTP/1.1"), 400),
    Case("request-line-8k", get(b"GET /" + b"a" * 8200 + b" HTTP/1.1"), 414),
    # Request target (RFC 9112 3.2).
    Case("absolute-form", get(b"GET http://127.0.0.1:11434/api/tags HTTP/1.1"), 400),  # RFC 9112 3.2.2
    Case("authority-form", get(b"CONNECT 127.0.0.1:11434 HTTP/1.1"), 400),              # RFC 9112 3.2.3
    Case("asterisk-not-options", get(b"GET * HTTP/1.1"), 400),                         # RFC 9112 3.2.4
    Case("target-fragment", get(b"GET /api/tags#frag HTTP/1.1"), 400),                 # h11 accepts "#"
    Case("target-backslash", get(b"GET /api\\tags HTTP/1.1"), 400),                    # h11 accepts "\"
    Case("target-raw-high-byte", get(b"GET /api/t\xe4gs HTTP/1.1"), 400),
    Case("target-bad-percent", get(b"GET /api/%zz HTTP/1.1"), 400),
    Case("target-no-slash", get(b"GET api/tags HTTP/1.1"), 400),
    Case("target-nul", get(b"GET /api/\x00tags HTTP/1.1"), 400),
    Case("target-space", get(b"GET /api/ tags HTTP/1.1"), 400),
    # Methods: only GET, HEAD, POST, DELETE, OPTIONS (405 with Allow).
    Case("method-put", get(b"PUT /api/tags HTTP/1.1"), 405),           # llhttp invalid.md: RTSP protocol and PUT method
    Case("method-patch", get(b"PATCH /api/tags HTTP/1.1"), 405),
    Case("method-trace", get(b"TRACE /api/tags HTTP/1.1"), 405),       # cross-site tracing
    Case("method-announce", get(b"ANNOUNCE /api/tags HTTP/1.0", K), 405),  # llhttp invalid.md: HTTP protocol and ANNOUNCE method
    Case("method-lowercase", get(b"get /api/tags HTTP/1.1"), 405),     # methods are case-sensitive
    Case("method-bad-char", get(b"bad_method\x01 /api/tags HTTP/1.1"), 400),  # desync severe.yaml: Bad method
    # Content-Length (RFC 9112 6.3).
    Case("cl-te", post(b"Content-Length: 4\r\n" + CHUNKED, b"0\r\n\r\n"), 400),   # CL.TE, RFC 9112 6.3 item 3, 11.2
    Case("te-cl", post(CHUNKED + b"Content-Length: 4\r\n", b"0\r\n\r\n"), 400),   # TE.CL; h11 keeps the CL header
    Case("te-identity-cl", post(b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"World"), 400),  # llhttp transfer-encoding.md: POST with Transfer-Encoding and Content-Length
    Case("cl-duplicate-same", post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400),
    Case("cl-duplicate-differ", post(b"Content-Length: 1000\r\nContent-Length: 100\r\n"), 400),  # desync severe.yaml: Multiple Content-Length
    Case("cl-list", post(b"Content-Length: 1000,1000\r\n"), 400),       # desync severe.yaml: Bad Content-Length: 1000,1000
    Case("cl-space-list", post(b"Content-Length: 1000 1000\r\n"), 400),  # desync severe.yaml: Bad Content-Length: 1000 1000
    Case("cl-decimal", post(b"Content-Length: 1000.1000\r\n"), 400),    # desync severe.yaml: Bad Content-Length: 1000.1000
    Case("cl-overflow", post(b"Content-Length: 18446744073709551616\r\n"), 400),  # desync severe.yaml: 64-bits overflow
    Case("cl-plus", post(b"Content-Length: +5\r\n", b"hello"), 400),
    Case("cl-negative", post(b"Content-Length: -1\r\n"), 400),
    Case("cl-hex", post(b"Content-Length: 0x5\r\n", b"hello"), 400),
    Case("cl-ctl", post(b"Content-Length: 1000\x11\r\n"), 400),         # desync severe.yaml: Bad character in Content-Length value
    Case("cl-name-space", post(b"Content-Length : 5\r\n", b"hello"), 400),  # RFC 9112 5.1; desync severe.yaml: Content-Length[white-space]
    Case("cl-too-large", post(b"Content-Length: %d\r\n" % (MAX_BODY + 1)), 413),  # refused before any body is read
    # Transfer-Encoding (RFC 9112 6.1).
    Case("te-unknown", post(b"Transfer-Encoding: pigeons\r\n"), 501),   # llhttp transfer-encoding.md: Ignoring pigeons
    Case("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked\r\n"), 501),
    Case("te-chunked-gzip", post(b"Transfer-Encoding: chunked, gzip\r\n"), 501),  # chunked not last
    Case("te-xchunked", post(b"Transfer-Encoding: xchunked\r\n"), 501),  # desync severe.yaml: Unknown Transfer-Encoding: xchunked
    Case("te-chunked-twice", post(b"Transfer-Encoding: chunked,chunked\r\n"), 400),  # desync severe.yaml: chunked,chunked
    Case("te-two-fields", post(CHUNKED + CHUNKED), 400),                # desync severe.yaml: Multiple Transfer-Encoding: chunked
    Case("te-empty", post(b"Transfer-Encoding:\r\nContent-Length: 5\r\n", b"hello"), 400),  # llhttp transfer-encoding.md: Empty Transfer-Encoding with Content-Length
    Case("te-quoted", post(b'Transfer-Encoding: "chunked"\r\n'), 400),
    Case("te-trailing-comma", post(b"Transfer-Encoding: chunked,\r\n"), 400),
    Case("te-ctl", post(b"Transfer-Encoding: chunked\x11\r\n"), 400),   # desync severe.yaml: chunked\x11
    Case("te-vtab", post(b"Transfer-Encoding: \x0bchunked\r\n"), 400),  # garden: vertical tab taken as whitespace
    Case("te-name-space", post(b"Transfer-Encoding : chunked\r\n"), 400),  # desync severe.yaml: Transfer-Encoding[white-space]
    Case("te-underscore", post(b"Transfer_Encoding: chunked\r\n"), 400),
    Case("te-http10", b"POST /api/generate HTTP/1.0\r\n" + K + CHUNKED + b"\r\n0\r\n\r\n", 400),  # RFC 9112 6.1
    Case("te-folded", post(b"Transfer-Encoding:\r\n chunked\r\n"), 400),  # obs-fold hiding TE
    # Field syntax (RFC 9112 2.2, 5).
    Case("obs-fold", get(fields=H + K + b"X-A: one\r\n two\r\n"), 400),  # RFC 9112 5.2; desync severe.yaml: Multiline headers
    Case("space-before-first-field", get(fields=b" " + H + K), 400),   # llhttp invalid.md: Invalid space after start line
    Case("spaces-before-field", post(b"Foo: bar\r\n Content-Length: 38\r\n"), 400),  # llhttp invalid.md: Spaces before headers
    Case("bare-lf-everywhere", b"GET /api/tags HTTP/1.1\nHost: a\n" + K[:-2] + b"\n\n", 400),  # llhttp invalid.md: Only LFs present
    Case("bare-lf-between-fields", post(b"x:x\nTransfer-Encoding: chunked\r\n"), 400),  # llhttp invalid.md: Headers separated by LF
    Case("bare-lf-cl", get(fields=H + K + b"Dummy: x\nContent-Length: 23\r\n"), 400),  # llhttp invalid.md: Missing CR between headers
    Case("bare-lf-end", get(fields=H + K)[:-2] + b"\n", 400),
    Case("bare-cr-between-fields", get(fields=H + K + b"Foo: 1\rBar: 2\r\n"), 400),  # llhttp invalid.md: Headers separated by CR
    Case("bare-cr-empty-value", post(b"x:\rTransfer-Encoding: chunked\r\n"), 400),  # llhttp invalid.md: Empty headers separated by CR
    Case("cr-dummy-line", get(fields=H + K + b"\rZGET /evil: HTTP/1.1\r\n"), 400),  # llhttp invalid.md: Headers separated by dummy characters
    Case("cr-in-value", post(b"Some-Bad-Header: value\rcontent-length: 1000\r\nContent-Length: 100\r\n"), 400),  # desync severe.yaml: \r in value is bad
    Case("nul-in-value", get(fields=H + K + b"X-A: value\x00\r\n"), 400),  # desync severe.yaml: \0 at the end of a value
    Case("nul-in-name", get(fields=H + K + b"Some-Bad-Header\x00: 1\r\n"), 400),  # desync severe.yaml: \0 in name is bad
    Case("ctl-in-value", get(fields=H + K + b"X-A: a\x01b\r\n"), 400),  # h11 accepts \x01-\x1f in values
    Case("del-in-value", get(fields=H + K + b"X-A: a\x7fb\r\n"), 400),
    Case("esc-in-name", get(fields=H + b"Connection\r\x1b\x35\xd5eep-Alive\r\n" + K), 400),  # llhttp invalid.md: Corrupted Connection header
    Case("bad-token-name", get(fields=H + K + b"Fo@: Failure\r\n"), 400),  # llhttp invalid.md: Invalid header token #1
    Case("empty-name", get(fields=H + K + b": Bar\r\n"), 400),         # llhttp invalid.md: Invalid header token #3
    Case("name-fold", get(fields=H + K + b"name\r\n : value\r\n"), 400),  # llhttp invalid.md: Illegal header field name line folding
    Case("no-colon", get(fields=H + K + b"NoColonHere\r\n"), 400),
    Case("underscore-key", get(fields=H + b"X_API_KEY: " + KEY.encode() + b"\r\n"), 400),  # CGI maps _ and - alike
    # Duplicates that make identity ambiguous (RFC 9112 3.2: exactly one Host).
    Case("host-twice", get(fields=H + H + K), 400),
    Case("host-missing", get(fields=K), 400),
    Case("host-invalid", get(fields=b"Host: a b@c\r\n" + K), 400),
    Case("api-key-twice", get(fields=H + K + b"X-API-Key: x\r\n"), 400),
    Case("authorization-twice", get(fields=H + b"Authorization: Bearer " + KEY.encode() + b"\r\nAuthorization: Bearer x\r\n"), 400),
    # Sizes (h11 #182: 5,000 fields in one read pass its 16 KiB check; h11 #155: no field count).
    Case("fields-101", get(fields=H + K + b"".join(b"X-F%d: v\r\n" % i for i in range(100))), 431),
    Case("fields-5000", get(fields=H + K + b"X: y\r\n" * 5000), 431),
    Case("field-17k", get(fields=H + K + b"X-Big: " + b"v" * 17000 + b"\r\n"), 431),
    Case("head-17k-many", get(fields=H + K + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 200) for i in range(90))), 431),
]

# --- refused inside a chunked body: the upstream never gets a complete request --------------

BODY_CASES = [
    Case("chunk-size-not-hex", post(CHUNKED, b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk-size-0x", post(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk-size-negative", post(CHUNKED, b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk-size-leading-space", post(CHUNKED, b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk-size-overflow", post(CHUNKED, b"10000000000000005\r\nhello\r\n0\r\n\r\n"), 400),  # garden: size overflow wrap
    Case("chunk-no-semicolon-ext", post(CHUNKED, b"2 erfrferferf\r\naa\r\n0 rrrr\r\n\r\n"), 400),  # llhttp transfer-encoding.md: No semicolon before chunk extensions
    Case("chunk-empty-ext", post(CHUNKED, b"2;\r\naa\r\n0\r\n\r\n"), 400),  # llhttp transfer-encoding.md: No extension after semicolon
    Case("chunk-ext-lone-cr", post(CHUNKED, b"5;a=\rb\r\nhello\r\n0\r\n\r\n"), 400),  # garden: lone CR in chunk extension (h11 accepts it)
    Case("chunk-ext-unbalanced-quote", post(CHUNKED, b'5;a="abc;b\r\nhello\r\n0\r\n\r\n'), 400),  # llhttp transfer-encoding.md: Unbalanced chunk extensions quoting
    Case("chunk-size-bare-lf", post(CHUNKED, b"5\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk-data-no-crlf", post(CHUNKED, b"5\r\nhelloX0\r\n\r\n"), 400),  # RFC 9112 7.1
    Case("chunk-data-too-long", post(CHUNKED, b"3\r\nhello\r\n0\r\n\r\n"), 400),  # TE.CL-style mismatch
    Case("chunk-trailer-bare-lf", post(CHUNKED, b"0\r\nX: y\n\r\n"), 400),
    Case("chunk-trailer-fold", post(CHUNKED, b"0\r\nX: y\r\n z\r\n\r\n"), 400),
    Case("chunk-over-limit", post(CHUNKED, b"%x\r\n" % (MAX_BODY + 1)), 413),  # refused from the size line
    Case("chunks-add-up-over-limit", post(CHUNKED, (b"400\r\n" + b"x" * 1024 + b"\r\n") * 5), 413),
]


@pytest.fixture
async def gate(upstream: RecordingUpstream, tmp_path: Path) -> AsyncIterator[Proxy]:
    from guardproxy.config.model import ServerLimits
    p = await start_proxy(upstream.port, tmp_path, server=ServerLimits(max_body=MAX_BODY))
    try:
        yield p
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()


async def send(port: int, raw: bytes, bytewise: bool, timeout: float = 5.0) -> bytes:
    """Send raw bytes (all at once or one per write); everything received until close.

    Writing stops once an answer arrives: the rest would only be discarded.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    received = bytearray()
    closed = asyncio.Event()

    async def collect() -> None:
        try:
            while data := await reader.read(65536):
                received.extend(data)
        except ConnectionError:
            pass
        closed.set()

    collector = asyncio.create_task(collect())
    try:
        if bytewise:
            for i in range(len(raw)):
                if received or closed.is_set():
                    break
                writer.write(raw[i:i + 1])
                await writer.drain()
        else:
            writer.write(raw)
            await writer.drain()
    except ConnectionError:
        pass
    try:
        await asyncio.wait_for(closed.wait(), timeout)
    finally:
        collector.cancel()
        writer.close()
    return bytes(received)


def check_refusal(raw: bytes, status: int) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), raw[:200]
    assert b"\r\nConnection: close" in head
    assert raw.count(b"HTTP/1.1 ") == 1, "exactly one response, then the connection closed"
    assert "error" in json.loads(body)
    if status == 405:
        assert b"\r\nAllow: GET, HEAD, POST, DELETE, OPTIONS" in head
