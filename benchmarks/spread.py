"""Scenario 7 of bench.py: guardproxy in front of two fake Ollama hosts, one twice as fast as the other.

Every client loops over the same short generation for a few seconds.  The
hosts differ only in their pace (tokens per second), and both have room for
every client, so routing alone decides where requests go: least-busy keeps
the generations in flight even on both, and the faster host, which finishes
its generations in half the time, serves about twice the requests.  A
round-robin balancer would give each host half.  The fakes run in this
process (the clients' core); guardproxy runs on its own core.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadgen import Client, http_request
from targets import ACCESS_LOGS, KEY, PROXY_CORE, _stop, _wait_ready, free_port, pinned

from guardproxy.testing.fake_ollama import FakeOllama

ROOT = Path(__file__).resolve().parent.parent


def request(tokens: int, key: str | None) -> bytes:
    # No fake_delay in the body: each host's own pace applies.
    body = b'{"model":"llama3.2","prompt":"Why is the sky blue?","options":{"num_predict":%d}}' % tokens
    return http_request("POST", "/api/generate", key, body)


def config(port: int, slow: FakeOllama, fast: FakeOllama, workdir: Path) -> str:
    import hashlib
    log = workdir / "access.log" if ACCESS_LOGS[0] else ""
    return (f'listen = "127.0.0.1:{port}"\n\n'
            f'[[upstreams]]\nname = "slow"\nurl = "{slow.url}"\nmax_concurrent = 256\n\n'
            f'[[upstreams]]\nname = "fast"\nurl = "{fast.url}"\nmax_concurrent = 256\n\n'
            f'[[keys]]\nname = "bench"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n\n'
            f'[log]\naccess = "{log}"\n\n[timeouts]\ngrace = "1s"\n\n'
            f'[server]\nmax_connections_per_ip = 100000\n')


async def two_hosts(streams: int, secs: float, tokens: int, delay: float, golden: Any, direct_port: int,
                    workdir: Path, meter: Any) -> tuple[dict[str, float | None], str]:
    """(figures, note) of one run; `meter(pid)` is bench.Meter, `golden` its byte check."""
    raw = request(tokens, KEY)
    await golden.learn(direct_port, raw, stream=True)
    workdir.mkdir(parents=True, exist_ok=True)
    slow = await FakeOllama.start(token_delay=delay * 2)
    fast = await FakeOllama.start(token_delay=delay)
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        (workdir / "guardproxy.toml").write_text(config(port, slow, fast, workdir))
        with open(workdir / "stderr.log", "wb") as err:
            proc = subprocess.Popen(pinned(PROXY_CORE, [sys.executable, "-m", "guardproxy", "run", "--config",
                                                        str(workdir / "guardproxy.toml"), "--loop", "uvloop"]),
                                    stdout=err, stderr=subprocess.STDOUT, cwd=ROOT)
        await asyncio.to_thread(_wait_ready, port, proc, "/health")
        done = [0]
        deadline = time.monotonic() + secs

        async def worker() -> None:
            c = await Client.connect(port)
            while time.monotonic() < deadline:
                golden.check(raw, await c.request(raw), stream=True)
                done[0] += 1
            c.close()
        before = [_generations(f) for f in (slow, fast)]
        with meter(proc.pid) as m:
            await asyncio.gather(*(worker() for _ in range(streams)))
        on_slow, on_fast = (_generations(f) - b for f, b in zip((slow, fast), before))
    finally:
        _stop(proc)
        await slow.close()
        await fast.close()
    figures: dict[str, float | None] = {
        "req/s": done[0] / m.elapsed, "to slow host": on_slow, "to fast host": on_fast,
        "fast/slow": on_fast / on_slow if on_slow else None,
        "proxy CPU µs/req": m.cpu / done[0] * 1e6 if done[0] else None}
    return figures, (f"{streams} clients; the fast host sends a token every {delay * 1000:g} ms, the slow one "
                     f"every {delay * 2000:g} ms; round-robin would give fast/slow 1.0, least-busy about 2")


def _generations(fake: FakeOllama) -> int:
    return sum(1 for r in fake.requests if r.target == "/api/generate")
