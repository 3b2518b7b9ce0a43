"""What shared limits cost guardproxy per request: in process, with Redis, and with Redis down.

    python benchmarks/cluster_cost.py           # 3 interleaved rounds of every variant and load (~4 min)
    python benchmarks/cluster_cost.py --quick   # a smoke run of the harness

guardproxy runs on core 0 (`taskset`), wrk, the fake Ollama and redis-server on core 1; the
figure is guardproxy's own CPU (user + system, /proc/PID) per request, access log off.

Variants (the same limits in the last three, set so high that nothing is refused):
  none           no limits at all
  in-process     per_ip, a key rate, max_concurrent and a token budget: decided in process
  redis          the same with [cluster]: one ADMIT round trip per request (+ one FINISH per generation)
  redis-down     the same, Redis not listening: on_redis_error = "local" at once, no round trip

Loads:
  small-64       GET /api/tags over 64 keep-alive connections (bench.py's scenario 1)
  small-1        the same over one connection: no other request to share a Redis write or read with
  gen-64         POST /api/generate of one token over 64 connections: slot + budget, ADMIT and FINISH

Every variant runs the whole time; each round measures them in turn, so a change in the
machine's load falls on all of them alike.  Measured here (2 cores shared with other work,
CPython 3.11.7, uvloop 0.23.0, redis-server 7.0.15), µs of guardproxy CPU per request, median of
5 rounds (min-max):

    variant                 small-64              small-1               gen-64
    none                99.4 (88.1-106.9)   242.8 (234.8-252.1)   133.8 (113.8-201.5)
    in-process          90.0 (85.1-102.2)   242.4 (216.7-340.8)   147.5 (126.3-176.7)
    redis              105.5 (93.7-122.9)   322.4 (271.9-563.8)   187.7 (153.5-199.9)
    redis-down          96.6 (87.0-104.2)   242.6 (200.2-380.8)   149.3 (132.6-197.3)

Redis against in-process within each round, small-64: +10, +14, +9, +20, +20 %.  With one
connection every round trip is one more sleep and wake-up of the gate, which is dear on a VM.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis_client import start_redis  # noqa: E402
from targets import CLIENT_CORE, KEY, PROXY_CORE, _stop, _wait_ready, free_port, pinned, start_fake  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

VARIANTS = ("none", "in-process", "redis", "redis-down")
LOADS = {"small-64": ("GET", 64), "small-1": ("GET", 1), "gen-64": ("POST", 64)}
GEN_BODY = '{"model":"llama3.2","prompt":"hi","options":{"num_predict":1},"stream":false}'
LIMITS = """
[limits]
per_ip = "1000000/s"
max_concurrent = 100000
max_queue = 100000
"""


def config_text(variant: str, port: int, upstream: int, redis_port: int, dead_port: int) -> str:
    key = f'[[keys]]\nname = "bench"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n'
    text = f'listen = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:{upstream}"\n\n[log]\naccess = ""\n' \
           f'[timeouts]\ngrace = "1s"\n[server]\nmax_connections_per_ip = 100000\n'
    if variant == "none":
        return text + key
    text += LIMITS + key + 'rate = "1000000/s"\ntokens = "1000000000/day"\n'
    if variant == "redis":
        text += f'[cluster]\nredis = "redis://127.0.0.1:{redis_port}/0"\n'
    elif variant == "redis-down":
        text += f'[cluster]\nredis = "redis://127.0.0.1:{dead_port}/0"\non_redis_error = "local"\n'
    return text


def wrk(port: int, load: str, secs: float, workdir: Path) -> int:
    method, conns = LOADS[load]
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs:g}s", "-H", f"X-API-Key: {KEY}"]
    if method == "POST":
        script = workdir / "gen.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = \'{GEN_BODY}\'\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')
        argv += ["-s", str(script), f"http://127.0.0.1:{port}/api/generate"]
    else:
        argv.append(f"http://127.0.0.1:{port}/api/tags")
    out = subprocess.run(pinned(CLIENT_CORE, argv), capture_output=True, text=True, check=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit(f"{load}: wrk saw {bad.group(1)} non-2xx responses:\n{out}")
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def start_proxy(variant: str, workdir: Path, upstream: int, redis_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = workdir / f"{variant}.toml"
    cfg.write_text(config_text(variant, port, upstream, redis_port, free_port()))
    proc = subprocess.Popen(pinned(PROXY_CORE, [sys.executable, "-m", "guardproxy", "run", "--config", str(cfg),
                                                "--loop", "uvloop"]),
                            stdout=subprocess.DEVNULL, stderr=open(workdir / f"{variant}.log", "ab"))
    _wait_ready(port, proc, "/health")
    return proc, port


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def measure(proc: subprocess.Popen[bytes], port: int, load: str, secs: float, workdir: Path) -> tuple[float, float]:
    """µs of (user, system) CPU per request."""
    wrk(port, load, min(1.0, secs), workdir)   # warm-up
    u0, s0 = cpu_split(proc.pid)
    n = wrk(port, load, secs, workdir)
    u1, s1 = cpu_split(proc.pid)
    return (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=float, default=5.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--loads", default=",".join(LOADS))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make bench-deps)")
    rounds, secs = (1, 1.0) if args.quick else (args.rounds, args.secs)
    variants, loads = args.variants.split(","), args.loads.split(",")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        fake, upstream = start_fake(workdir)
        redis_port = free_port()
        redis = start_redis(redis_port, int(CLIENT_CORE) if (os.cpu_count() or 1) >= 2 else None, tmp)
        # Every variant runs the whole time (an idle gate costs nothing); each round measures them in
        # turn, so a change in the machine's load falls on all of them alike.
        proxies = {}
        try:
            for variant in variants:
                proxies[variant] = start_proxy(variant, workdir, upstream, redis_port)
            for r in range(rounds):
                for load in loads:
                    for variant in variants:
                        user, system = measure(*proxies[variant], load, secs, workdir)
                        results.setdefault((variant, load), []).append(user + system)
                        print(f"  round {r + 1}: {load:9} {variant:11} {user + system:6.1f} µs "
                              f"({user:5.1f} user, {system:5.1f} system)", flush=True)
        finally:
            for proc, _ in proxies.values():
                _stop(proc)  # type: ignore[arg-type]
            redis.kill()
            redis.wait()
            _stop(fake)
    print(f"\nµs of guardproxy CPU per request, median of {rounds} round(s) (min-max)\n")
    print(f"    {'variant':14}" + "".join(f"{load:>22}" for load in loads))
    for variant in variants:
        cells = []
        for load in loads:
            v = results[(variant, load)]
            cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})")
        print(f"    {variant:14}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
