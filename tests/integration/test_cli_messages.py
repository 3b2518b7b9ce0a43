"""Messages that say what happened: "config error:" only for a mistake in the config, a taken port says who
holds it, a Redis that is down is said at once, and [[upstream]] gets its file, line and "did you mean"."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from conftest import KEY
from guardproxy.config.write import create_config, generate_key, hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.ports import free_port
from support.processes import Running, gp

one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_refusals_that_are_not_config_errors_say_what_they_are(tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    create_config(path, generate_key(), "app")
    assert gp("keys", "revoke", "app", "--config", str(path), cwd=tmp_path).returncode == 0
    cases = {
        ("keys", "rotate", "app"): 'guardproxy: keys rotate: key "app" in ',
        ("keys", "rotate", "app", "--grace", "soon"): "guardproxy: keys rotate: --grace: expected ",
        ("keygen", "--name", "app"): 'guardproxy: keygen: a key named "app" already exists in ',
        ("keys", "revoke", "nobody"): 'keys: no key named "nobody"',
    }
    for args, words in cases.items():
        r = gp(*args, "--config", str(path), cwd=tmp_path)
        line = _one_line(r.stderr)
        assert r.returncode == 2 and words in line and "config error" not in line, (args, line)
    assert "is revoked, and a revoked key stays revoked" in gp("keys", "rotate", "app", "--config", str(path),
                                                                 cwd=tmp_path).stderr


def test_upstream_in_the_singular_gets_file_line_and_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f'listen = "127.0.0.1:0"\n\n[[keys]]\nname = "a"\nkey_sha256 = "{hash_key(KEY)}"\n\n'
                    f'[[upstream]]\nname = "gpu"\nurl = "http://127.0.0.1:9"\n')
    line = _one_line(gp("run", "--config", str(path), cwd=tmp_path).stderr)
    assert line.startswith(f"guardproxy: config error: {path}:7: [[upstream]]: did you mean [[upstreams]]?"), line


@one_loop
@pytest.mark.posix_only("a graceful stop by SIGTERM (on Windows SIGTERM is TerminateProcess)")
async def test_a_taken_port_says_whether_a_guardproxy_holds_it(fake: FakeOllama, tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    path.write_text(f'upstream = "http://127.0.0.1:{fake.port}"\n[log]\naccess = ""\n'
                    f'[[keys]]\nname = "a"\nkey_sha256 = "{hash_key(KEY)}"\n')
    port = free_port()
    gate = await Running.start("run", "--config", str(path), "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    try:
        r = await asyncio.to_thread(gp, "run", "--config", str(path), "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    finally:
        assert await gate.stop() == 0
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}: a guardproxy is already running there" in r.stderr
    assert "stop that one first" in r.stderr
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        r = await asyncio.to_thread(gp, "run", "--config", str(path), "--listen", f"127.0.0.1:{taken}", cwd=tmp_path)
    assert r.returncode == 1 and "another program (not a guardproxy" in r.stderr and f":{taken}" in r.stderr


def test_usage_with_redis_down_says_so_at_once(tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    log = tmp_path / "access.log"
    log.write_text('{"time":"2026-11-26T10:00:00Z","client":"127.0.0.1","status":200,"key":"a"}\n')
    dead = free_port()
    path.write_text(f"[log]\naccess = '{log}'\n[cluster]\nredis = \"redis://127.0.0.1:{dead}\"\n"
                    f'[[keys]]\nname = "a"\nkey_sha256 = "{hash_key(KEY)}"\ntokens = "1000/h"\n')
    r = gp("usage", "--config", str(path), "--since", "all", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout.splitlines()[1].split()[:2] == ["a", "1"]  # the log's report is there
    line = _one_line(r.stderr)
    assert line == (f"guardproxy usage: token budgets not shown: Redis at redis://127.0.0.1:{dead}/0: "
                    f"nothing listens there (connection refused)"), line
