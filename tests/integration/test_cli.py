"""The command line as a user runs it: real processes, real files."""

from __future__ import annotations

import asyncio
import stat
import tomllib
from pathlib import Path

import pytest

from guardproxy import __version__
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.processes import Running, gp
from support.raw_http import read_response, request_bytes

# Subprocess tests do not depend on the event loop of the test itself.
one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])


async def get(port: int, path: str, headers: dict[str, str] | None = None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes("GET", path, headers=headers))
    r = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    return r


def test_version(tmp_path: Path) -> None:
    r = gp("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"guardproxy {__version__}"


@one_loop
@pytest.mark.posix_only("POSIX file modes, and a graceful stop by SIGTERM (on Windows SIGTERM is TerminateProcess)")
async def test_first_run_writes_private_config_and_prints_key_once(tmp_path: Path) -> None:
    async with await FakeOllama.start() as fake:
        run = await Running.start("--listen", "127.0.0.1:0", "--upstream", fake.url, cwd=tmp_path)
        try:
            cfg = tmp_path / "guardproxy.toml"
            assert cfg.exists()
            assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
            key = next(w for w in run.banner.split() if w.startswith("gp_") and len(w) > 40)
            assert key not in cfg.read_text()
            assert tomllib.loads(cfg.read_text())["keys"][0]["key_sha256"] == hash_key(key)
            # A fresh config turns bans on.
            assert tomllib.loads(cfg.read_text())["ban"] == {"after_failures": 20, "window": "10min",
                                                             "duration": "15min"}
            assert "curl" in run.banner and str(cfg.resolve()) in run.banner
            assert (await get(run.port, "/api/tags", {"X-API-Key": key})).status == 200
            assert (await get(run.port, "/api/tags")).status == 401
        finally:
            assert await run.stop() == 0
        # The second run reuses the file and prints no key.
        run = await Running.start("--listen", "127.0.0.1:0", "--upstream", fake.url, cwd=tmp_path)
        try:
            assert "gp_" not in run.banner
            assert (await get(run.port, "/api/tags", {"X-API-Key": key})).status == 200
        finally:
            await run.stop()


@one_loop
async def test_env_key_needs_no_config_file(tmp_path: Path) -> None:
    env_key = "gp_from-the-environment-0123456789"
    async with await FakeOllama.start() as fake:
        run = await Running.start("run", "--listen", "127.0.0.1:0", "--upstream", fake.url,
                                  "--loop", "asyncio", cwd=tmp_path, env={"GUARDPROXY_API_KEY": env_key})
        try:
            assert not (tmp_path / "guardproxy.toml").exists()
            assert "(asyncio, 1 key)" in run.banner
            assert (await get(run.port, "/api/tags", {"Authorization": f"Bearer {env_key}"})).status == 200
            line = (await asyncio.wait_for(run.proc.stdout.readline(), 5)).decode()  # type: ignore[union-attr]
            assert '"key":"env"' in line
        finally:
            await run.stop()


@one_loop
async def test_keygen_appends_a_block_and_keeps_comments(tmp_path: Path) -> None:
    cfg = tmp_path / "my.toml"
    original = ('# my notes\nlisten = "127.0.0.1:0"   # keep this comment\n\n'
                '[[keys]]\nname = "old"\nkey = "a-hand-written-plaintext-key"\n')
    cfg.write_text(original)
    r = gp("keygen", "--name", "phone", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("gp_") and len(key) >= 46  # 256 bits in base64url
    text = cfg.read_text()
    assert text.startswith(original)  # nothing the user wrote is lost
    assert key not in text and hash_key(key) in text
    assert "phone" in r.stderr and str(cfg) in r.stderr
    # A duplicate name is refused and the file is untouched.
    r = gp("keygen", "--name", "phone", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr and cfg.read_text() == text
    async with await FakeOllama.start() as fake:
        run = await Running.start("--config", str(cfg), "--upstream", fake.url, cwd=tmp_path)
        try:
            assert "plaintext" in run.banner  # the hand-written key is warned about
            assert (await get(run.port, "/api/tags", {"X-API-Key": key})).status == 200
            assert (await get(run.port, "/api/tags", {"X-API-Key": "a-hand-written-plaintext-key"})).status == 200
        finally:
            await run.stop()


def test_keygen_admin_key_is_marked_admin(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    r = gp("keygen", "--name", "me", "--admin", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0 and "admin key" in r.stderr
    r = gp("keygen", "--name", "app", "--config", str(cfg), cwd=tmp_path)
    keys = tomllib.loads(cfg.read_text())["keys"]
    assert [(k["name"], k.get("admin", False)) for k in keys] == [("me", True), ("app", False)]


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    r = gp("init", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0 and "gp_" in r.stdout
    before = cfg.read_text()
    r = gp("init", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr and cfg.read_text() == before


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "envcfg.toml"
    r = gp("keygen", cwd=tmp_path, env={"GUARDPROXY_CONFIG": str(cfg)})
    assert r.returncode == 0 and cfg.exists() and not (tmp_path / "guardproxy.toml").exists()


CONFIG_ERRORS = [
    ('listen = "nowhere"\n', ":1: listen: expected HOST:PORT"),
    ('listen = 11435\n', ":1: listen: expected a string"),
    ('upstream = "ftp://x"\n', ":1: upstream: expected an http:// URL"),
    ('colour = "blue"\n', ":1: colour: expected one of the known fields"),
    ('[[keys]]\nname = "a"\nkey_sha256 = "abc"\n', ":3: keys[0].key_sha256: expected 64 hexadecimal"),
    ('[[keys]]\nname = "a"\n', ":1: keys[0]: expected exactly one of key_sha256"),
    ('listen = "127.0.0.1:1"\n', ": keys: expected at least one [[keys]] entry"),
    ('[timeouts]\nread = "forever"\n', ":2: timeouts.read: expected a duration"),
    ('[log]\naccess = 1\n', ":2: log.access: expected a string"),
    ('listen = \n', ": not valid TOML: "),
]


@pytest.mark.parametrize("text,expected", CONFIG_ERRORS)
def test_config_mistakes_are_one_line_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    if "keys" not in text and "at least one" not in expected:
        text += '\n[[keys]]\nname = "k"\nkey_sha256 = "' + "0" * 64 + '"\n'
    cfg.write_text(text)
    r = gp("run", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith(f"guardproxy: config error: {cfg}")
    assert expected in lines[0]


def test_missing_and_unreadable_config(tmp_path: Path) -> None:
    r = gp("run", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    d = tmp_path / "adir.toml"
    d.mkdir()
    r = gp("run", "--config", str(d), cwd=tmp_path)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("env_key", ["abc", "k" * 20 + "\r"])
def test_an_env_key_that_could_never_work_is_one_line_and_exit_2(tmp_path: Path, env_key: str) -> None:
    r = gp("run", cwd=tmp_path, env={"GUARDPROXY_API_KEY": env_key})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("guardproxy: config error: GUARDPROXY_API_KEY (environment variable): expected a key ")
    assert not (tmp_path / "guardproxy.toml").exists()


def test_bad_command_line_values(tmp_path: Path) -> None:
    r = gp("run", "--listen", "localhost", cwd=tmp_path, env={"GUARDPROXY_API_KEY": "k" * 20})
    assert r.returncode == 2 and "--listen: expected HOST:PORT" in r.stderr
    r = gp("run", "--upstream", "localhost:11434", cwd=tmp_path, env={"GUARDPROXY_API_KEY": "k" * 20})
    assert r.returncode == 2 and "--upstream: expected an http:// URL" in r.stderr


@one_loop
async def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await asyncio.to_thread(gp, "run", "--listen", f"127.0.0.1:{port}", cwd=tmp_path,
                                    env={"GUARDPROXY_API_KEY": "k" * 20})
        assert r.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    finally:
        server.close()
