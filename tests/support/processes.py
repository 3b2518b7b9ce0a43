"""guardproxy as a child process: a command run to its end, or a server started with its own arguments,
its port read from its banner."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path


# How long a child guardproxy may take: its imports alone take seconds under Windows CPython in Wine.
CHILD_TIMEOUT = 90.0 if sys.platform == "win32" else 20.0


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its GUARDPROXY_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDPROXY_")}
    env.update(extra or {})
    return env


def gp(*args: str, cwd: Path, env: dict[str, str] | None = None,
       timeout: float = CHILD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`python -m guardproxy ARGS` run to its end, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "guardproxy", *args], cwd=cwd, env=child_env(env),
                          capture_output=True, text=True, timeout=timeout)


async def launch(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = CHILD_TIMEOUT) -> tuple[asyncio.subprocess.Process, int, str]:
    """`python -m guardproxy ARGS` without the caller's GUARDPROXY_* variables: (process, port, banner).

    Returns once the banner names the port it listens on; stderr stays piped (a few lines).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardproxy", *args, cwd=cwd, env=child_env(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    banner = ""
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout)).decode()  # type: ignore[union-attr]
        assert line, f"guardproxy exited early: {banner}"
        banner += line
        if " listening on " in line:
            return proc, int(line.split(" listening on ")[1].split(" ")[0].rsplit(":", 1)[1]), banner


class Running:
    """guardproxy serving as a child process: stopped by SIGTERM, or killed."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, banner: str) -> None:
        self.proc, self.port, self.banner = proc, port, banner

    @classmethod
    async def start(cls, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> "Running":
        return cls(*await launch(*args, cwd=cwd, env=env))

    def kill(self) -> None:
        """As a crash would end it: nothing released, nothing saved."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 20)
