"""guardproxy as a child process: started with its own arguments, its port read from its banner."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path


async def launch(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 20) -> tuple[asyncio.subprocess.Process, int, str]:
    """`python -m guardproxy ARGS` without the caller's GUARDPROXY_* variables: (process, port, banner).

    Returns once the banner names the port it listens on; stderr stays piped (a few lines).
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDPROXY_")}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardproxy", *args, cwd=cwd, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    banner = ""
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout)).decode()  # type: ignore[union-attr]
        assert line, f"guardproxy exited early: {banner}"
        banner += line
        if " listening on " in line:
            return proc, int(line.split(" listening on ")[1].split(" ")[0].rsplit(":", 1)[1]), banner
