"""A relative `[log] access` path is next to the config file, as the state file is: for run, keys list and usage,
wherever they are started from."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import KEY
from guardproxy.config.load import load_config
from guardproxy.config.write import hash_key
from guardproxy.engine.state.tokenfile import state_path
from guardproxy.testing.fake_ollama import FakeOllama
from support.ports import free_port
from support.processes import Running, gp
from support.raw_http import fetch

one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])


def _config(folder: Path, upstream_port: int) -> Path:
    folder.mkdir()
    path = folder / "guardproxy.toml"
    path.write_text(f'listen = "127.0.0.1:{free_port()}"\nupstream = "http://127.0.0.1:{upstream_port}"\n'
                    f'[log]\naccess = "logs/access.log"\n'
                    f'[[keys]]\nname = "team"\nkey_sha256 = "{hash_key(KEY)}"\ntokens = "1000/h"\n')
    (folder / "logs").mkdir()
    return path


def test_the_rule_is_the_state_files(tmp_path: Path) -> None:
    path = _config(tmp_path / "etc", 9)
    config = load_config(path)
    assert Path(config.access_log) == (tmp_path / "etc" / "logs" / "access.log")
    assert state_path(path, {}).parent == Path(config.access_log).parent.parent


@one_loop
@pytest.mark.posix_only("a graceful stop by SIGTERM (on Windows SIGTERM is TerminateProcess)")
async def test_run_keys_list_and_usage_from_another_folder_read_one_log(fake: FakeOllama, tmp_path: Path) -> None:
    path = _config(tmp_path / "gate", fake.port)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gate = await Running.start("run", "--config", str(path), cwd=elsewhere)
    try:
        assert (await fetch(gate.port, "GET", "/api/version", headers={"X-API-Key": KEY})).status == 200
    finally:
        assert await gate.stop() == 0
    log = tmp_path / "gate" / "logs" / "access.log"
    assert '"key":"team"' in log.read_text()
    assert not (elsewhere / "logs").exists()
    for cwd, config in ((tmp_path / "gate", "guardproxy.toml"), (elsewhere, str(path)), (tmp_path, "gate/guardproxy.toml")):
        listed = await asyncio.to_thread(gp, "keys", "list", "--config", config, cwd=cwd)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[1].split()[-1].startswith("20"), listed.stdout  # a last use, not "-"
        used = await asyncio.to_thread(gp, "usage", "--config", config, "--since", "all", cwd=cwd)
        assert used.returncode == 0, used.stderr
        assert used.stdout.splitlines()[1].split()[:2] == ["team", "1"], used.stdout
