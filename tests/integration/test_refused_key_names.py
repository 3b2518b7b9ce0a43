"""A refused key that the config knows (revoked, expired, a rotated key's old value) is logged by its name and
state, so an operator finds the clients still using it; the client sees the same 401 as for any wrong key."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from conftest import ADMIN_KEY, KEY, OTHER_KEY, start_proxy
from guardproxy.config.model import KeyEntry
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.polling import until
from support.raw_http import fetch

OLD = "gp_old-value-0123456789abcdefghijklmnopqrstu"


async def test_revoked_expired_and_rotated_keys_are_logged_by_name(fake: FakeOllama, tmp_path: Path) -> None:
    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    keys = (KeyEntry("gone", bytes.fromhex(hash_key(KEY)), revoked=date(2026, 1, 2)),
            KeyEntry("old-phone", bytes.fromhex(hash_key(OTHER_KEY)), expires=yesterday),
            KeyEntry("app", bytes.fromhex(hash_key(ADMIN_KEY)), previous_sha256=bytes.fromhex(hash_key(OLD)),
                     previous_valid_until=datetime.now(timezone.utc) - timedelta(seconds=1)))
    proxy = await start_proxy(fake.port, tmp_path, keys=keys)
    try:
        bodies = set()
        for key in (KEY, OTHER_KEY, OLD, "gp_nobody-0123456789abcdefghijklmnopqrstuvw"):
            r = await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": key})
            assert r.status == 401
            bodies.add(r.body)
        assert len(bodies) == 1  # nothing tells a client which case it is
        lines = await until(lambda: (lines := proxy.log_lines()) and len(lines) == 4 and lines)
    finally:
        await proxy.server.stop(grace=0)
    assert [(line["key"], line.get("key_state")) for line in lines] == [
        ("gone", "revoked"), ("old-phone", "expired"), ("app", "rotated"), (None, None)]
