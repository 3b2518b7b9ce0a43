"""The [server], [timeouts] and [tls] fields, and the open-file check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guardproxy.config.load import parse_config
from guardproxy.config.model import ConfigError, ServerLimits
from guardproxy.config.values import parse_size

BASE = {"keys": [{"name": "a", "key": "x" * 20}]}


def test_defaults() -> None:
    cfg = parse_config(BASE, None)
    assert cfg.server == ServerLimits(max_body=64 * 1024 * 1024, max_connections=10000,
                                      max_connections_per_ip=256, max_headers=100)
    assert (cfg.timeouts.body, cfg.timeouts.write, cfg.timeouts.first_byte) == (30.0, 60.0, 300.0)
    assert cfg.tls is None


def test_values() -> None:
    cfg = parse_config({**BASE, "server": {"max_body": "1MiB", "max_headers": 50},
                        "timeouts": {"first_byte": "10min", "write": 5}}, None)
    assert cfg.server.max_body == 1024 * 1024 and cfg.server.max_headers == 50
    assert cfg.timeouts.first_byte == 600.0 and cfg.timeouts.write == 5.0
    assert parse_size(7) == 7 and parse_size("2 KB") == 2000


@pytest.mark.parametrize("table,message", [
    ({"max_body": "lots"}, r"server.max_body: expected a size like"),
    ({"max_connections": 0}, r"server.max_connections: expected a whole number of at least 1"),
    ({"max_headers": True}, r"server.max_headers: expected a whole number"),
    ({"max_conns": 5}, r"server.max_conns: expected one of the known fields"),
])
def test_mistakes_name_the_field(tmp_path: Path, table: dict, message: str) -> None:
    text = "[server]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"').replace("True", "true") for k, v in table.items())
    with pytest.raises(ConfigError, match=message) as e:
        parse_config({**BASE, "server": table}, tmp_path / "g.toml", text)
    assert str(e.value).startswith(f"{tmp_path / 'g.toml'}:2: ")


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")
def test_open_file_limit_warning_when_it_cannot_be_raised() -> None:
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256));"
            "from guardproxy.engine.fdlimit import check_open_files;"
            "print(check_open_files(10000)); print(check_open_files(0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    warning, fine = out.strip().splitlines()
    assert "open-file limit is 256" in warning and "max_connections = 10000" in warning
    assert fine == "None"


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")
def test_open_file_limit_is_raised_towards_the_hard_limit() -> None:
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096));"
            "from guardproxy.engine.fdlimit import check_open_files;"
            "print(check_open_files(1000)); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "1256"]


def test_per_address_cap_counts_ipv4_and_ipv6_slash_64() -> None:
    from guardproxy.decisions.limits import address_bucket
    assert address_bucket("203.0.113.7") == "203.0.113.7"
    assert address_bucket("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
