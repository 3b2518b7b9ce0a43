"""What `run`'s command line sets (--upstream, --listen) stays set through every reload: a real `run` process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import KEY, OTHER_KEY
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.ports import free_port
from support.processes import Running, gp
from support.raw_http import fetch

one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])

CONFIG = """\
listen = "127.0.0.1:{file_port}"
upstream = "http://127.0.0.1:{dead}"   # nothing listens here: only --upstream reaches the fake Ollama

[log]
access = ""

[[keys]]
name = "app"
key_sha256 = "{app}"

[[keys]]
name = "phone"
key_sha256 = "{phone}"
"""


async def _next_reload(gate: Running) -> str:
    """The next "config reloaded" (or "not reloaded") line on the gate's stderr."""
    assert gate.proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(gate.proc.stderr.readline(), 10)).decode()
        assert line, "the gate exited"
        if "reloaded" in line:
            return line


@one_loop
@pytest.mark.posix_only("a graceful stop by SIGTERM (on Windows SIGTERM is TerminateProcess)")
async def test_a_revocation_under_upstream_and_listen_keeps_both(fake: FakeOllama, tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    path.write_text(CONFIG.format(file_port=free_port(), dead=free_port(), app=hash_key(KEY),
                                  phone=hash_key(OTHER_KEY)))
    listen = free_port()
    gate = await Running.start("run", "--config", str(path), "--upstream", f"http://127.0.0.1:{fake.port}",
                               "--listen", f"127.0.0.1:{listen}", cwd=tmp_path)
    try:
        assert gate.port == listen
        assert (await fetch(gate.port, "GET", "/api/version", headers={"X-API-Key": KEY})).status == 200
        revoked = await asyncio.to_thread(gp, "keys", "revoke", "phone", "--config", str(path), cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        line = await _next_reload(gate)
        assert "config reloaded" in line and "need a restart" not in line, line
        # The other key still reaches the upstream the command line named, not the file's dead one.
        assert (await fetch(gate.port, "GET", "/api/version", headers={"X-API-Key": KEY})).status == 200
        assert (await fetch(gate.port, "GET", "/api/version", headers={"X-API-Key": OTHER_KEY})).status == 401
    finally:
        assert await gate.stop() == 0
