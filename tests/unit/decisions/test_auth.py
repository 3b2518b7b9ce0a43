"""Keys: either header, refusals, expiry."""

from __future__ import annotations

from datetime import date

import pytest

from guardproxy.config.load import parse_config
from guardproxy.config.write import hash_key
from guardproxy.decisions.auth import KeyRing
from guardproxy.wire.errors import BadRequest, Unauthorized
from guardproxy.wire.heads import parse_request_head
from support.samples import FULL, head, load


def ring_for(key: str) -> KeyRing:
    return KeyRing(parse_config({"keys": [{"name": "a", "key_sha256": hash_key(key)}]}, None).keys)


def raw_head(*lines: str) -> bytes:
    return ("GET /api/tags HTTP/1.1\r\nHost: x\r\n" + "".join(l + "\r\n" for l in lines) + "\r\n").encode()


def test_auth_accepts_either_header() -> None:
    ring = ring_for("gp_k" * 8)
    assert ring.identify(parse_request_head(raw_head("X-API-Key: " + "gp_k" * 8))).name == "a"
    assert ring.identify(parse_request_head(raw_head("Authorization: Bearer " + "gp_k" * 8))).name == "a"
    assert ring.identify(parse_request_head(raw_head("authorization: BEARER " + "gp_k" * 8))).name == "a"


@pytest.mark.parametrize("lines", [
    (), ("X-API-Key: nope",), ("Authorization: Basic Z3A=",), ("Authorization: Bearer",),
    ("X-API-Key: wrong", "Authorization: Bearer " + "gp_k" * 8),
])
def test_auth_refusals(lines: tuple[str, ...]) -> None:
    with pytest.raises(Unauthorized):
        ring_for("gp_k" * 8).identify(parse_request_head(raw_head(*lines)))


def test_duplicate_key_headers_are_refused_before_auth() -> None:
    with pytest.raises(BadRequest):
        parse_request_head(raw_head("X-API-Key: " + "gp_k" * 8, "X-API-Key: " + "gp_k" * 8))


def test_expired_key_is_unauthorized_like_an_unknown_one() -> None:
    c = load(FULL)
    ring = KeyRing(c.keys)
    req = head(X_API_Key="0123456789abcdef-plain")
    assert ring.identify(req, date(2027, 1, 31)).name == "vercel-app"
    with pytest.raises(Unauthorized) as e:
        ring.identify(req, date(2027, 2, 1))
    assert (e.value.status, e.value.message) == (401, "unauthorized")
