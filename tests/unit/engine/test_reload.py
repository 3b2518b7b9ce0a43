"""Live config reloads, against a real (not started) server object."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from guardproxy.config.write import generate_key, hash_key
from guardproxy.engine.reload import Reloader
from guardproxy.engine.server import GuardServer
from guardproxy.config.load import load_config

BASE = """listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:9"

[log]
access = ""

[[keys]]
name = "a"
key_sha256 = "{a}"
"""


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def watched(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> tuple[Path, str, GuardServer, Reloader]:
    """A server started from BASE with key "a" and its reloader; the log captured from here on."""
    path = tmp_path / "guardproxy.toml"
    a = hash_key(generate_key())
    write(path, BASE.format(a=a))
    server = GuardServer(load_config(path))
    caplog.set_level(logging.INFO, logger="guardproxy")
    return path, a, server, Reloader(server, path)


async def test_a_good_edit_is_applied_and_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, _, server, reloader = watched(tmp_path, caplog)
    assert not reloader.changed()
    write(path, BASE.format(a=hash_key(generate_key())) + '\n[[keys]]\nname = "b"\nkey_sha256 = "%s"\n'
          % hash_key(generate_key()))
    assert reloader.changed()
    assert reloader.reload("SIGHUP")
    assert [k.name for k in server.config.keys] == ["a", "b"]
    (said,) = caplog.records  # one line, at INFO
    assert said.levelno == logging.INFO and "SIGHUP: config reloaded" in said.getMessage()
    assert "2 keys" in said.getMessage()
    assert not reloader.changed()


async def test_a_broken_edit_keeps_the_running_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, _, server, reloader = watched(tmp_path, caplog)
    before = server.config
    write(path, BASE.format(a=hash_key(generate_key())) + '\n[limits]\nper_ip = "often"\n')
    assert not reloader.reload()
    assert server.config is before
    assert reloader.refused == 1
    (said,) = caplog.records
    line = said.getMessage()
    assert said.levelno == logging.WARNING and "config not reloaded" in line and f"{path}:" in line and "limits.per_ip" in line


async def test_settings_that_need_a_restart_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, a, server, reloader = watched(tmp_path, caplog)
    write(path, BASE.format(a=a).replace("127.0.0.1:9", "127.0.0.1:10").replace(":0", ":1"))
    assert reloader.reload()
    assert "(listen changes need a restart)" in caplog.text
    assert server.config.listen_port == 0  # unchanged until a restart
    # The upstream is a host like any other: a reload replaces it.
    assert server.config.upstream.port == 10 and [m.name for m in server.hosts.members.values()] == ["127.0.0.1:10"]


async def test_a_tls_change_needs_a_restart_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    path, a, server, reloader = watched(tmp_path, caplog)
    write(path, BASE.format(a=a) + '\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    assert reloader.reload()
    assert "(tls changes need a restart)" in caplog.text
    assert server.config.tls is None and server.scheme == b"http"  # still plain HTTP until a restart
