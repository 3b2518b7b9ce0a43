"""Config parsing and key checks, without sockets."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from guardproxy.decisions.auth import KeyRing
from guardproxy.config.load import load_config, parse_config
from guardproxy.config.model import ConfigError
from guardproxy.config.values import parse_duration, parse_hostport, parse_upstream
from guardproxy.config.write import append_key, create_config, generate_key, hash_key
from guardproxy.wire.errors import BadRequest, Unauthorized
from guardproxy.wire.heads import parse_request_head


def test_durations() -> None:
    assert parse_duration(5) == 5.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("10min") == 600.0
    assert parse_duration("1h") == 3600.0
    for bad in ("soon", "-1s", True, -3, [1]):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_addresses() -> None:
    assert parse_hostport("0.0.0.0:11435") == ("0.0.0.0", 11435)
    assert parse_hostport("[::1]:8080") == ("::1", 8080)
    assert parse_upstream("http://[::1]:11434").authority == "[::1]:11434"
    assert parse_upstream("http://gpu-box").port == 80
    for bad in ("11435", "host:99999", "[zz]:1", "a:b:1"):
        with pytest.raises(ValueError):
            parse_hostport(bad)
    for bad in ("https://x:1", "127.0.0.1:11434", "http://x:0", "http://x/path"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


def test_generated_keys_are_long_and_unique() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) >= 46 for k in keys)


def test_env_key_adds_a_key_named_env() -> None:
    cfg = parse_config({}, None, env_key="gp_abcdefghijklmnop")
    assert [k.name for k in cfg.keys] == ["env"]


def test_create_then_append_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    k1, k2 = generate_key(), generate_key()
    create_config(path, k1)
    with pytest.raises(ConfigError):
        create_config(path, k1)
    append_key(path, "second", k2)
    cfg = load_config(path)
    assert [k.name for k in cfg.keys] == ["default", "second"]
    assert tomllib.loads(path.read_text())["keys"][1]["key_sha256"] == hash_key(k2)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


def test_append_to_broken_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("listen = \n")
    with pytest.raises(ConfigError):
        append_key(path, "x", generate_key())
    assert path.read_text() == "listen = \n"


def ring_for(key: str) -> KeyRing:
    return KeyRing(parse_config({"keys": [{"name": "a", "key_sha256": hash_key(key)}]}, None).keys)


def head(*lines: str) -> bytes:
    return ("GET /api/tags HTTP/1.1\r\nHost: x\r\n" + "".join(l + "\r\n" for l in lines) + "\r\n").encode()


def test_auth_accepts_either_header() -> None:
    ring = ring_for("gp_k" * 8)
    assert ring.authenticate(parse_request_head(head("X-API-Key: " + "gp_k" * 8))) == "a"
    assert ring.authenticate(parse_request_head(head("Authorization: Bearer " + "gp_k" * 8))) == "a"
    assert ring.authenticate(parse_request_head(head("authorization: BEARER " + "gp_k" * 8))) == "a"


@pytest.mark.parametrize("lines", [
    (), ("X-API-Key: nope",), ("Authorization: Basic Z3A=",), ("Authorization: Bearer",),
    ("X-API-Key: wrong", "Authorization: Bearer " + "gp_k" * 8),
])
def test_auth_refusals(lines: tuple[str, ...]) -> None:
    with pytest.raises(Unauthorized):
        ring_for("gp_k" * 8).authenticate(parse_request_head(head(*lines)))


def test_duplicate_key_headers_are_refused_before_auth() -> None:
    with pytest.raises(BadRequest):
        parse_request_head(head("X-API-Key: " + "gp_k" * 8, "X-API-Key: " + "gp_k" * 8))
