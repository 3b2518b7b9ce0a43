"""Keys: either header, refusals, expiry."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest

from guardproxy.config.load import parse_config
from guardproxy.config.write import hash_key
from guardproxy.decisions.auth import KeyRing, key_state
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


# --- revoked keys and rotation grace (a fake clock) -------------------------------------------

OLD, NEW = "gp_old-key-0123456789abcdefghijklmnopqrstuvw", "gp_new-key-0123456789abcdefghijklmnopqrstuvw"
UNTIL = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)


OTHER = "gp_other-key-0123456789abcdefghijklmnopqrstu"


def lifecycle_ring(**fields: object) -> KeyRing:
    key = {"name": "app", "key_sha256": hash_key(NEW), **fields}
    return KeyRing(parse_config({"keys": [key, {"name": "other", "key_sha256": hash_key(OTHER)}]}, None).keys)


def who(ring: KeyRing, key: str, now: datetime) -> str | None:
    try:
        return ring.identify(head(X_API_Key=key), now=now).name
    except Unauthorized as e:
        assert (e.status, e.message) == (401, "unauthorized")
        return None


def test_a_revoked_key_is_the_same_401_as_an_unknown_one() -> None:
    ring = lifecycle_ring(revoked=date(2026, 11, 29))
    now = datetime(2020, 1, 1, tzinfo=timezone.utc)  # the date is a record: revoked is revoked
    assert who(ring, NEW, now) is None and who(ring, "gp_unknown-0123456789abcdef", now) is None
    assert who(ring, OTHER, now) == "other"
    assert key_state(ring.identify(head(X_API_Key=OTHER), now=now), now) == "active"
    (entry,) = parse_config({"keys": [{"name": "app", "key_sha256": hash_key(NEW), "revoked": date(2026, 11, 29),
                                       "expires": date(2026, 1, 1)}]}, None).keys
    assert key_state(entry, now) == "revoked"  # revoked wins over expired and rotating
    assert key_state(replace(entry, revoked=None), datetime(2026, 1, 2, tzinfo=timezone.utc)) == "expired"


def test_the_previous_key_works_until_its_time_and_not_after() -> None:
    ring = lifecycle_ring(previous_key_sha256=hash_key(OLD), previous_valid_until=UNTIL)
    before = UNTIL - timedelta(microseconds=1)
    assert who(ring, OLD, before) == "app" and who(ring, NEW, before) == "app"
    assert who(ring, OLD, UNTIL) is None and who(ring, NEW, UNTIL) == "app"
    entry = ring.identify(head(X_API_Key=NEW), now=UNTIL)
    assert key_state(entry, before) == "rotating" and key_state(entry, UNTIL) == "active"
    # A revoked key's previous value is refused too, and expiry applies to both values.
    revoked = lifecycle_ring(previous_key_sha256=hash_key(OLD), previous_valid_until=UNTIL, revoked=date(2026, 11, 29))
    assert who(revoked, OLD, before) is None and who(revoked, NEW, before) is None
    expired = lifecycle_ring(previous_key_sha256=hash_key(OLD), previous_valid_until=UNTIL, expires=date(2026, 11, 28))
    assert who(expired, OLD, before) is None and who(expired, NEW, before) is None


def test_a_previous_value_never_shadows_another_keys_current_one() -> None:
    ring = lifecycle_ring(previous_key_sha256=hash_key(OTHER), previous_valid_until=UNTIL)
    assert who(ring, OTHER, UNTIL - timedelta(hours=1)) == "other"
