"""strict.check_parsed passes exactly what check_head passes, with the same facts.

parse_request_head lets h11 scan each line once and judges the head on h11's reading
(check_parsed); check_head, which reads the raw lines again, gives the verdict whenever that
reading looks unusual. The two orders must agree on every head: the reference here is the
order before check_parsed existed (check_head first, then h11), on the attack corpus, on
heads made to sit at the edges where h11 is more lenient, and on random mutations.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings

from guardproxy.wire import heads as heads_module
from guardproxy.wire.errors import BadRequest, GuardError, HeadTooLarge
from guardproxy.wire.heads import parse_request_head
from guardproxy.wire.strict import HeadScanner, check_head
from tests.support.attack_cases import HEAD_CASES
from tests.unit.wire.test_strict import heads

Outcome = tuple[str, int, str] | tuple[str, int | None, bool]


def reference(data: bytes) -> Outcome:
    """check_head first, then h11: the verdict and facts as they were decided before."""
    try:
        facts = check_head(data)
        heads_module._h11_parse(data)
    except GuardError as err:
        return ("refused", err.status, str(err))
    except (h11.RemoteProtocolError, h11.LocalProtocolError) as e:
        err = (HeadTooLarge if e.error_status_hint == 431 else BadRequest)(f"malformed request: {e}")
        return ("refused", err.status, str(err))
    return ("ok", facts.content_length, facts.chunked)


def actual(data: bytes) -> Outcome:
    try:
        req = parse_request_head(data)
    except GuardError as err:
        return ("refused", err.status, str(err))
    return ("ok", req.content_length, req.chunked)


def head(*fields: bytes, line: bytes = b"POST /api/generate HTTP/1.1") -> bytes:
    return b"\r\n".join((line, *fields)) + b"\r\n\r\n"


EDGES = [
    head(b"Host: a", b"Content-Length: 5"),
    head(b"Host: a", b"Content-Length: 5", b"Content-Length: 5"),       # h11 folds equal repeats into one
    head(b"Host: a", b"Content-Length: 5, 5"),                         # ... and a list of equal values
    head(b"Host: a", b"content-length: 5", b"CONTENT-LENGTH: 5"),
    head(b"Host: a", b"Content-Length: 0005"),
    head(b"Host: a", b"Content-Length: 1234567890123456789"),          # 19 digits
    head(b"Host: a", b"Content-Length:  7 "),
    head(b"Host: a", b"Content-Length: 5", b"Transfer-Encoding: chunked"),
    head(b"Host: a", b"Transfer-Encoding: chunked"),
    head(b"Host: a", b"Transfer-Encoding: Chunked "),
    head(b"Host: a", b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.0"),
    head(b"Host: a", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    head(b"Host: a", b"Transfer-Encoding: gzip, chunked"),
    head(b"Host: a", b"X_API_Key: k"), head(b"Host: a", b"X-API_Key: k"), head(b"Host_: a"),
    head(b"Host: a", b"User-Agent: ollama-python (x86_64 linux)"),      # "_" in a value is fine
    head(b"Host: a", b"X-A: b", b" folded"), head(b"Host: a", b"X-A: b", b"\tfolded"),
    head(b"Host: a", b"Host: b"), head(b"Host: a", b"HOST: a"),
    head(b"Host: a", b"X-API-Key: k", b"x-api-key: k"),
    head(b"Host: a", b"Authorization: Bearer a", b"Authorization: Bearer a"),
    head(b"Host: a b"), head(b"Host: [::1]:80"), head(b"Host: 127.0.0.1:11435"), head(b"Host: a@b"),
    head(b"Host: %41"), head(b"Host: %4"),
    head(), head(line=b"GET / HTTP/1.0"), head(b"Host: a", line=b"GET / HTTP/1.0"),
    head(b"Host: a", line=b"GET /api/tags?x=%41&y=%zz HTTP/1.1"), head(b"Host: a", line=b"GET /a%2Fb HTTP/1.1"),
    head(b"Host: a", line=b"GET /a\xffb HTTP/1.1"), head(b"Host: a", line=b"GET a/b HTTP/1.1"),
    head(b"Host: a", line=b"OPTIONS * HTTP/1.1"), head(b"Host: a", line=b"GET * HTTP/1.1"),
    head(b"Host: a", line=b"PUT / HTTP/1.1"), head(b"Host: a", line=b"GET / HTTP/2.0"),
    head(b"Host: a", line=b"PUT / HTTP/2.0"), head(b"Host: a", b"Transfer-Encoding: gzip", line=b"GET / HTTP/2.0"),
    head(b"Host: a", b"X-A: \x01"), head(b"Host: a", b"X-A: a\x7fb"), head(b"Host: a", b"X-A: a\tb"),
    head(b"Host: a", b"X-A : b"), head(b"Host: a", b"X-A:b"), head(b"Host: a", b":b"),
    head(b"Host: a", b"Expect: 100-continue", b"X-Request-Id: abc_1", b"Connection: keep-alive"),
]


@pytest.mark.parametrize("data", [c.raw for c in HEAD_CASES] + EDGES)
def test_the_corpus_gets_the_same_verdict_and_facts(data: bytes) -> None:
    scanner = HeadScanner()
    try:
        end = scanner.feed(data)
    except GuardError:
        return  # refused before either parser sees it
    if end < 0:
        return
    one = data[scanner.start:end]
    assert actual(one) == reference(one)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads())
def test_random_heads_get_the_same_verdict_and_facts(data: bytes) -> None:
    scanner = HeadScanner()
    try:
        end = scanner.feed(data)
    except GuardError:
        return
    if end < 0:
        return
    one = data[scanner.start:end]
    assert actual(one) == reference(one)
