"""Client CPU per Redis call: redis-py's asyncio client against guardproxy's lean RESP client.

    python benchmarks/redis_client.py            # three runs of each client, 1 and 32 callers (~90 s)
    python benchmarks/redis_client.py --quick    # a smoke run of the harness

Starts its own redis-server (free loopback port, no persistence) on one core and runs each
client in a fresh process pinned to the other core, under uvloop.  Every call is what the
request path will send: EVALSHA of a GCRA rate-limit script (one key per bucket, Redis TIME
inside, burst = count: redis-cell semantics).  CPU is the client process's user + system time
(getrusage) over the measured calls, after a warm-up; each caller owns its bucket.

Clients:
  redis-py           redis-py's asyncio client, pure-Python parser (hiredis hidden from it)
  redis-py+hiredis   the same with hiredis; both with timeouts and retries set as the product would
  lean               guardproxy.engine.state.resp.RedisClient: one connection, asyncio.Protocol +
                     hiredis.Reader, concurrent calls written in one transport write per loop turn,
                     each call with its own deadline

Measured here (2 cores shared with other work, CPython 3.11.7, uvloop 0.23.0, redis-py 8.1.0,
hiredis 3.5.0, redis-server 7.0.15), two invocations: µs of client CPU per EVALSHA, median of
3 runs (min-max):

    client              1 caller                          32 callers
    redis-py            129.8 (118-137)  117.7 (107-136)  59.4 (48-66)   50.0 (49-51)
    redis-py+hiredis     98.4 (94-117)   114.4 (113-115)  41.0 (39-56)   43.2 (41-50)
    lean                 49.7 (48-52)     47.8 (43-50)     4.9 (4.2-6.5)  5.5 (5.1-6.3)

- redis-py takes one connection per concurrent caller from its pool and sends each call on its
  own; the lean client sends the calls of one loop turn together, so its cost per call falls as
  callers rise: 8-12 times cheaper than redis-py with 32 callers, about half with one.
- With one caller, ~27 µs of the lean client's ~48 are kernel time (send, wake-up and receive of
  one round trip); only batching concurrent calls amortises that.
- redis-server's CPU per call: ~50 µs for every client with one caller; with 32, 8 µs behind
  the lean client against 17 µs behind redis-py (pipelining halves the server's work too).
- redis-py as shipped (`--clients "redis-py+hiredis,defaults"`: 5 s timeouts, retries) cost
  the same as with timeouts set (103 / 46 µs): that redis-py measured above the design notes'
  59 / 33 µs lies in the machine or its load, not in the settings.
- An asyncio.timeout around each lean call cost ~4.5 µs (about half its cost with 32 callers), so
  the client keeps one deadline alarm per connection instead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from targets import cpu_seconds  # noqa: E402

GCRA = """
-- GCRA with burst = count (redis-cell semantics).  KEYS[1] holds the theoretical arrival time in µs.
-- ARGV: count, period in µs.  Returns {allowed, remaining, retry_after_us}.
local count = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local interval = period / count
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0}
"""
COUNT, PERIOD_US = 1_000_000, 1_000_000      # never runs dry: every call takes the write path
OP_TIMEOUT = 1.0                             # generous so a scheduling hiccup on a shared box fails no call
CLIENTS = ("redis-py", "redis-py+hiredis", "lean")
EXTRA_CLIENTS = ("redis-py+hiredis,defaults",)   # --clients: as shipped (5 s timeouts, retries)
CALLERS = (1, 32)


def cores() -> tuple[int, int] | None:
    """(client core, redis-server core), or None when there are not two cores to pin to."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def blocking_command(port: int, *args: str) -> Any:
    import hiredis
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(hiredis.pack_command(args))  # type: ignore[arg-type]
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            data = s.recv(65536)
            if not data:
                raise ConnectionError("redis-server closed the connection")
            reader.feed(data)
        return reply


def start_redis(port: int, core: int | None, workdir: str) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", workdir, "--daemonize", "no", "--logfile", ""]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited with {proc.returncode}")
        try:
            if blocking_command(port, "PING") == b"PONG":
                return proc
        except OSError:
            time.sleep(0.01)
    proc.kill()
    raise SystemExit("redis-server did not answer within 10 s")


# ---------------------------------------------------------------- worker (one client, one process)

async def make_call(client: str, port: int) -> tuple[Callable[[bytes], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    if client == "lean":
        from guardproxy.config.redis_url import RedisAddress
        from guardproxy.engine.state.commands import Script
        from guardproxy.engine.state.resp import RedisClient
        script = Script(GCRA)
        lean = RedisClient(RedisAddress("127.0.0.1", port), timeout=OP_TIMEOUT)
        lean.start()
        if not await lean.wait_connected(5):
            raise SystemExit("lean client could not connect")
        return (lambda key: lean.evalsha(script, (key,), (COUNT, PERIOD_US))), lean.close
    if client.startswith("redis-py") and "hiredis" not in client:
        sys.modules["hiredis"] = None  # type: ignore[assignment]   # as if it were not installed
    import redis.asyncio
    import redis.utils
    from redis.backoff import NoBackoff
    from redis.asyncio.retry import Retry
    if redis.utils.HIREDIS_AVAILABLE != ("hiredis" in client):
        raise SystemExit(f"{client}: hiredis available = {redis.utils.HIREDIS_AVAILABLE}")
    if client.endswith(",defaults"):
        r = redis.asyncio.Redis(host="127.0.0.1", port=port)
    else:   # its defaults are 5 s timeouts and retries; the request path allows neither
        r = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=OP_TIMEOUT,
                                socket_connect_timeout=OP_TIMEOUT, retry=Retry(NoBackoff(), 0),
                                retry_on_timeout=False)
    sha = hashlib.sha1(GCRA.encode()).hexdigest()   # the driver loaded it

    async def call(key: bytes) -> Any:
        return await r.evalsha(sha, 1, key, COUNT, PERIOD_US)  # type: ignore[misc]
    return call, r.aclose


async def measure(client: str, port: int, callers: int, calls: int, server_pid: int) -> dict[str, Any]:
    call, close = await make_call(client, port)
    per_caller = max(1, calls // callers)
    errors = 0

    async def caller(i: int, n: int) -> None:
        nonlocal errors
        key = f"bench:{client}:{callers}:{i}".encode()
        for _ in range(n):
            reply = await call(key)
            if not (isinstance(reply, list) and reply[0] == 1):
                errors += 1

    await asyncio.gather(*(caller(i, max(1, per_caller // 5)) for i in range(callers)))   # warm-up
    server0 = cpu_seconds(server_pid)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    await asyncio.gather(*(caller(i, per_caller) for i in range(callers)))
    wall = time.perf_counter() - wall0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    server = cpu_seconds(server_pid) - server0
    await close()
    done = per_caller * callers
    user, system = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
    return {"cpu_us": (user + system) / done * 1e6, "sys_us": system / done * 1e6, "server_us": server / done * 1e6,
            "calls_per_s": done / wall, "errors": errors}


def worker(args: argparse.Namespace) -> None:
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    import uvloop
    result = uvloop.run(measure(args.worker, args.port, args.callers, args.calls, args.server_pid))
    print(json.dumps(result))


# ---------------------------------------------------------------- driver

def run_worker(client: str, callers: int, calls: int, port: int, core: int | None, server_pid: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", client, "--callers", str(callers), "--calls", str(calls),
            "--port", str(port), "--server-pid", str(server_pid)]
    if core is not None:
        argv += ["--core", str(core)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"{client} with {callers} callers: {result['errors']} calls got a wrong answer")
    return result


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few thousand calls, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default=" ".join(CLIENTS),
                        help=f"space-separated, from {', '.join(CLIENTS + EXTRA_CLIENTS)}")
    parser.add_argument("--worker", choices=CLIENTS + EXTRA_CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--callers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    runs = 1 if args.quick else args.runs
    calls = {1: 2_000, 32: 6_400} if args.quick else {1: 20_000, 32: 64_000}
    clients = args.clients.split()
    if unknown := set(clients) - set(CLIENTS + EXTRA_CLIENTS):
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    pins = cores()
    import hiredis
    import redis
    import uvloop
    print(f"Python {platform.python_version()}, uvloop {uvloop.__version__}, redis-py {redis.__version__}, "
          f"hiredis {hiredis.__version__}; "
          + (f"client on core {pins[0]}, redis-server on core {pins[1]}" if pins else "NOT pinned (one core)"))
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = start_redis(port, pins[1] if pins else None, workdir)
        print(blocking_command(port, "INFO", "server").decode().split("redis_version:")[1].split()[0],
              f"on 127.0.0.1:{port}")
        blocking_command(port, "SCRIPT", "LOAD", GCRA)
        try:
            table: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for run in range(runs):
                for client in clients:
                    for n in CALLERS:
                        r = run_worker(client, n, calls[n], port, pins[0] if pins else None, server.pid)
                        table.setdefault((client, n), []).append(r)
                        print(f"  run {run + 1}: {client:17} {n:2} callers {r['cpu_us']:6.1f} µs client CPU/call "
                              f"({r['sys_us']:4.1f} sys), redis-server {r['server_us']:5.1f} µs, "
                              f"{r['calls_per_s']:6.0f} calls/s", flush=True)
        finally:
            server.kill()
            server.wait()
    report(table, clients, runs)


def report(table: dict[tuple[str, int], list[dict[str, Any]]], clients: list[str], runs: int) -> None:
    def median(client: str, n: int, field: str) -> float:
        return statistics.median(r[field] for r in table[(client, n)])

    heads = "".join(f"{f'{n} caller' + ('s' if n > 1 else ''):>22}" for n in CALLERS)
    print(f"\nµs of client CPU per EVALSHA, median of {runs} run(s) (min-max)\n")
    print(f"    {'client':26}{heads}")
    for client in clients:
        print(f"    {client:26}" + "".join(f"{spread([r['cpu_us'] for r in table[(client, n)]]):>22}" for n in CALLERS))
    print("\nmedians: µs of redis-server CPU per call, calls/s\n")
    print(f"    {'client':26}{heads}")
    for client in clients:
        cells = (f"{median(client, n, 'server_us'):12.1f} {median(client, n, 'calls_per_s'):9.0f}" for n in CALLERS)
        print(f"    {client:26}" + "".join(cells))


if __name__ == "__main__":
    main()
