"""Log levels as a user sets them: `run --log-level` and `[log] level`, in a real process; the journal's prefix."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from guardproxy.testing.fake_ollama import FakeOllama
from support.polling import until
from support.ports import free_port
from support.processes import child_env
from support.raw_http import fetch

one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])
PLAIN = "a-hand-written-plaintext-key"


async def run_until_up(tmp_path: Path, level: str | None, *args: str, journal: bool = False) -> str:
    """Start `guardproxy run`, wait for /health, stop it with SIGTERM; what it wrote to stderr."""
    port = free_port()
    cfg = tmp_path / "g.toml"
    async with await FakeOllama.start() as fake:
        cfg.write_text(f'listen = "127.0.0.1:{port}"\nupstream = "{fake.url}"\n'
                       + (f'[log]\nlevel = "{level}"\naccess = ""\n' if level else '[log]\naccess = ""\n')
                       + f'[[keys]]\nname = "old"\nkey = "{PLAIN}"\n')
        err_path = tmp_path / "stderr"
        with open(err_path, "w") as err:
            env = child_env()
            if journal:
                st = os.fstat(err.fileno())
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "guardproxy", "run", "--config", str(cfg),
                                                        "--loop", "asyncio", *args, cwd=tmp_path, env=env,
                                                        stdout=asyncio.subprocess.DEVNULL, stderr=err)
            try:
                async def up_or_ended() -> bool:
                    if proc.returncode is not None:
                        return True
                    try:
                        return (await fetch(port, "GET", "/health")).status == 200
                    except OSError:
                        return False
                await until(up_or_ended, timeout=10, interval=0.05)
                assert proc.returncode is None, err_path.read_text()
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 20) == 0
    return err_path.read_text()


@one_loop
@pytest.mark.posix_only("a graceful stop by SIGTERM (on Windows SIGTERM is TerminateProcess)")
async def test_the_config_level_hides_what_is_below_it(tmp_path: Path) -> None:
    err = await run_until_up(tmp_path, "warning")
    assert err == f'guardproxy: warning: key "old" is stored in plaintext in {tmp_path / "g.toml"}; replace it with key_sha256\n'


@one_loop
@pytest.mark.posix_only("a graceful stop by SIGTERM (on Windows SIGTERM is TerminateProcess)")
async def test_the_command_line_level_wins_over_the_config(tmp_path: Path) -> None:
    err = await run_until_up(tmp_path, "warning", "--log-level", "info")
    lines = err.splitlines()
    assert lines[0].startswith('guardproxy: warning: key "old"')
    assert lines[1].startswith("guardproxy: version ") and " listening on http://127.0.0.1:" in lines[1]
    assert lines[2] == "guardproxy: shutting down (grace 30s)"
    err = await run_until_up(tmp_path, None, "--log-level", "error")
    assert err == ""


@pytest.mark.skipif(sys.platform == "win32", reason="systemd's journal")
@one_loop
async def test_under_the_journal_each_line_carries_its_priority(tmp_path: Path) -> None:
    lines = (await run_until_up(tmp_path, None, journal=True)).splitlines()
    assert lines[0].startswith('<4>warning: key "old"')
    assert lines[1].startswith("<6>version ") and lines[2] == "<6>shutting down (grace 30s)"
