"""How much memory N idle keep-alive connections cost guardproxy, and what they do to /health.

    python tests/load/idle_connections.py [--connections 10000] [--loop auto|asyncio|uvloop]

Starts guardproxy in its own process on loopback, measures its resident
memory and the latency of /health, opens N connections that each make one
request and then stay idle (keep-alive), and measures both again.  Needs an
open-file limit above N in this shell (ulimit -n).  Prints one JSON object.
Traffic stays on 127.0.0.x; every socket is closed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "gp_idle-measurement-key-0123456789abcdefghij"
SOURCES = 40  # spread over 127.0.0.2..41 like many clients would be


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def health_latencies(port: int, n: int = 300) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        await reader.readuntil(b"\r\n\r\nOK")
        out.append((time.perf_counter() - t0) * 1000)
    writer.close()
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3)}


async def open_idle(port: int, n: int) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []

    async def one(i: int) -> None:
        s = socket.socket()
        s.setblocking(False)
        s.bind((f"127.0.0.{2 + i % SOURCES}", 0))
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        got = b""
        while not got.endswith(b"OK"):
            got += await loop.sock_recv(s, 4096)
        socks.append(s)

    for start in range(0, n, 500):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))
    return socks


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "guardproxy.toml"
        port_probe = socket.socket()
        port_probe.bind(("127.0.0.1", 0))
        port = port_probe.getsockname()[1]
        port_probe.close()
        cfg.write_text(
            f'listen = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:9"\n'
            f'[log]\naccess = ""\n[timeouts]\nkeepalive = "600s"\n'
            f'[server]\nmax_connections = {args.connections + 100}\nmax_connections_per_ip = {args.connections}\n'
            f'[[keys]]\nname = "m"\nkey = "{KEY}"\n')
        proc = subprocess.Popen([sys.executable, "-m", "guardproxy", "run", "--config", str(cfg), "--loop", args.loop],
                                stderr=subprocess.PIPE, text=True)
        try:
            banner = proc.stderr.readline() if proc.stderr else ""
            while "listening" not in banner:
                if proc.poll() is not None:
                    raise SystemExit(f"guardproxy did not start: {banner}")
                banner = proc.stderr.readline() if proc.stderr else ""
            await health_latencies(port, 50)  # warm up
            before_rss = rss_kib(proc.pid)
            before = summary(await health_latencies(port))
            t0 = time.perf_counter()
            socks = await open_idle(port, args.connections)
            opened_s = time.perf_counter() - t0
            after_rss = rss_kib(proc.pid)
            after = summary(await health_latencies(port))
            for s in socks:
                s.close()
            return {
                "connections": len(socks), "loop": args.loop, "open_seconds": round(opened_s, 2),
                "rss_before_mib": round(before_rss / 1024, 1), "rss_after_mib": round(after_rss / 1024, 1),
                "per_connection_kib": round((after_rss - before_rss) / len(socks), 2),
                "health_before": before, "health_with_idle": after,
            }
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"))
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
