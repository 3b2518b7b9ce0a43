"""`guardproxy keys list | revoke | rotate` as a user runs them, against a gate that is running.

The gate is a real GuardServer with the file watch `run` uses (Reloader.watch at
its default interval); the commands run as separate processes, as from a shell.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator

import pytest

from conftest import KEY, OTHER_KEY
from guardproxy.config.load import load_config
from guardproxy.config.write import hash_key
from guardproxy.engine.reload import POLL_INTERVAL, Reloader
from guardproxy.engine.server import GuardServer
from guardproxy.testing.fake_ollama import FakeOllama
from support.polling import until
from support.processes import child_env, gp
from support.raw_http import fetch
from support.terminals import open_terminal, read_until

one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])

CONFIG = """\
# the team's gate
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:{port}"

[log]
access = ""   # off

# the web app
[[keys]]
name = "app"
key_sha256 = "{app}"   # made by keygen
rate = "600/min"

# a phone
[[keys]]
name = "phone"
key_sha256 = "{phone}"
""".replace("\n", "\r\n")


class Gate:
    def __init__(self, server: GuardServer, reloader: Reloader, path: Path) -> None:
        self.server, self.reloader, self.path = server, reloader, path

    async def status(self, key: str) -> int:
        return (await fetch(self.server.port, "GET", "/api/version", headers={"X-API-Key": key})).status

    async def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(gp, *args, "--config", str(self.path), cwd=self.path.parent)


@pytest.fixture
async def gate(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Gate]:
    path = tmp_path / "guardproxy.toml"
    path.write_bytes(CONFIG.format(port=fake.port, app=hash_key(KEY), phone=hash_key(OTHER_KEY)).encode())
    server = GuardServer(load_config(path))
    await server.start()
    reloader = Reloader(server, path)
    watch = asyncio.ensure_future(reloader.watch())  # the interval `run` uses
    try:
        yield Gate(server, reloader, path)
    finally:
        watch.cancel()
        await server.stop(grace=0)


@one_loop
async def test_a_revoked_key_gets_401_from_the_running_gate(gate: Gate) -> None:
    before = gate.path.read_bytes()
    assert await gate.status(KEY) == 200 and await gate.status(OTHER_KEY) == 200
    r = await gate.run("keys", "revoke", "app")
    assert r.returncode == 0, r.stderr
    loop = asyncio.get_running_loop()
    saved = loop.time()
    # The watch polls every second and waits 0.2 s for the size to settle: 1.2 s at worst, plus slack.
    await until(lambda: gate.reloader.reloads == 1, timeout=POLL_INTERVAL + 2.0)
    took = loop.time() - saved
    assert await gate.status(KEY) == 401 and await gate.status(OTHER_KEY) == 200
    assert took < POLL_INTERVAL + 1.0, f"revocation took {took:.2f}s to apply"
    # One line added in the app's block, with the file's CRLF; every other byte as it was.
    today = datetime.now(timezone.utc).date().isoformat()
    after = gate.path.read_bytes()
    line = f"revoked = {today}\r\n".encode()
    rate = b'rate = "600/min"\r\n'
    assert after.replace(line, b"", 1) == before and after.index(line) == after.index(rate) + len(rate)
    assert f'revoked key "app" in {gate.path}: line 13 added; nothing else changed' in r.stderr


@one_loop
async def test_a_rotated_key_works_during_its_grace_and_not_after(gate: Gate) -> None:
    r = await gate.run("keys", "rotate", "phone", "--grace", "1s")
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    await until(lambda: gate.reloader.reloads == 1, timeout=POLL_INTERVAL + 2.0)
    assert await gate.status(new) == 200 and await gate.status(OTHER_KEY) == 200
    # The grace ends at a whole second at most 2 s from the save; no reload is needed for it to end.
    until_line = next(line for line in gate.path.read_text().splitlines() if line.startswith("previous_valid_until"))
    ends = datetime.strptime(until_line.split("= ")[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert 0 < (ends - datetime.now(timezone.utc)).total_seconds() <= 2.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 4.0
    while True:
        # The gate decides between the request's sending and its answer: a 200 proves the grace was
        # still running when the request was sent, not when the answer came back.
        sent = datetime.now(timezone.utc)
        if await gate.status(OTHER_KEY) != 200:
            break
        assert sent < ends, "the old key outlived its grace"
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    assert datetime.now(timezone.utc) >= ends and await gate.status(new) == 200
    assert gate.reloader.reloads == 1
    # Rotating without a grace stops the old key as soon as the file is reloaded.
    r = await gate.run("keys", "rotate", "phone")
    newer = r.stdout.strip()
    assert r.returncode == 0 and "the old key is refused from now on" in r.stderr
    await until(lambda: gate.reloader.reloads == 2, timeout=POLL_INTERVAL + 2.0)
    assert await gate.status(new) == 401 and await gate.status(newer) == 200
    assert "previous_" not in gate.path.read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
@one_loop
async def test_keys_list_when_piped_and_on_a_narrow_terminal(gate: Gate, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text('{"time":"2026-11-28T10:00:00Z","client":"127.0.0.1","key":"app","status":200}\n'
                   'a line from another tool\n'
                   '{"time":"2026-11-29T09:30:00Z","client":"127.0.0.1","key":"app","status":403}\n'
                   '{"time":"2026-11-29T09:31:00Z","client":"127.0.0.1","key":null,"status":401}\n')
    text = gate.path.read_text().replace('access = ""   # off', f'access = "{log}"')
    gate.path.write_text(text)
    assert (await gate.run("keys", "rotate", "app", "--grace", "24h")).returncode == 0
    assert (await gate.run("keys", "revoke", "phone")).returncode == 0
    r = await gate.run("keys", "list")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0] == ["NAME", "STATE", "ADMIN", "CLOUD", "METRICS", "MODELS", "RATE", "MAX_CONCURRENT", "TOKENS",
                       "EXPIRES", "LAST_USE"]
    assert rows[1] == ["app", "rotating", "no", "no", "no", "all", "600/min", "-", "-", "-", "2026-11-29T09:30:00Z"]
    assert rows[2] == ["phone", "revoked", "no", "no", "no", "all", "-", "-", "-", "-", "-"]
    assert 'the old value of "app" works until ' in r.stdout
    # A 40-column terminal: one short paragraph per key, no line wider than the terminal.
    out = await _on_terminal(["keys", "list", "--config", str(gate.path)], 40, tmp_path)
    assert out and all(len(line) <= 40 for line in out.splitlines()), out
    assert "app  rotating  last use:" in out and "rate: 600/min" in out and "phone  revoked" in out


async def _on_terminal(args: list[str], columns: int, cwd: Path) -> str:
    """Run with stdout on a pseudo-terminal `columns` wide; what it printed."""
    master, slave = open_terminal(24, columns)
    env = {k: v for k, v in child_env().items() if k not in ("COLUMNS", "LINES")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "guardproxy", *args, cwd=cwd, env=env,
                                                stdout=slave, stderr=asyncio.subprocess.PIPE)
    os.close(slave)
    try:
        # Until the child has exited and closed its side (EIO), or 20 s.
        raw = await read_until(master, lambda _: False, asyncio.get_running_loop().time() + 20)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    assert proc.returncode == 0, err.decode()
    return raw.decode().replace("\r\n", "\n")


@one_loop
async def test_keys_list_says_why_last_use_is_unknown(gate: Gate) -> None:
    r = await gate.run("keys", "list")
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[-1] == "-"
    assert "last use: unknown, [log] access is off (set it to a file to see it)" in r.stdout
