"""Instructions per small request through guardproxy, with one upstream host or with three (callgrind).

    python benchmarks/instructions.py                 # every kind, 1 and 3 hosts (a few minutes)
    python benchmarks/instructions.py --kinds gen --requests 200

Each figure is deterministic: the same N and 2N requests over one keep-alive
connection, in one process (client, guardproxy and fake hosts), under
callgrind, straight to a fake host and through guardproxy; the proxy's
share of one request is ((proxy 2N - proxy N) - (direct 2N - direct N)) / N.
With three hosts the fakes listen on 127.0.0.2-4; their snapshot is taken
once at start (health_interval is an hour, so no check runs during the
count).  Kinds:

    get      GET /api/tags: proxied with one host; answered from the snapshot with three
    version  GET /api/version: forwarded (three hosts: to the least busy one)
    gen      POST /api/generate, one token, not streamed: forwarded (three hosts: model routing)

`--feature F` turns one of the request path's optional features on for the key (no limits):
`models` (a `models` list: the body's model read and checked), `clamp` (`max_output_tokens` and
`max_num_ctx` below what the body asks: the body re-encoded), `cap` (`max_output_tokens` above
it: read, nothing rewritten), `alias` (an [aliases] entry for the body's model: rewritten), `cloud`
(`cloud = true`: no cloud scan of the body).  Compare with `--feature none`.

`--limits in-process` adds per_ip, a key rate, max_concurrent and a token budget (set so high that
nothing is refused, as in cluster_cost.py); `--limits redis` keeps them in a redis-server started
for the run (outside callgrind: only the gate's side of a round trip is counted).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "gp_prof-0123456789abcdefghijklmnopqrstuvwxyzAB"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def request(kind: str) -> bytes:
    if kind == "get":
        return f"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n\r\n".encode()
    if kind == "version":
        return f"GET /api/version HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n\r\n".encode()
    body = b'{"model":"llama3.2","prompt":"hi","stream":false,"options":{"num_predict":1,"num_ctx":8192}}'
    return (f"POST /api/generate HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


FEATURES: dict[str, dict[str, object]] = {
    "none": {}, "models": {"models": ("llama3.2*",)}, "clamp": {"max_output_tokens": 1, "max_num_ctx": 4096},
    "cap": {"max_output_tokens": 4096, "max_num_ctx": 65536}, "alias": {}, "cloud": {"cloud": True},
}


async def child(mode: str, hosts: int, kind: str, n: int, limits: str = "none", redis_port: int = 0,
                feature: str = "none") -> None:
    from guardproxy.config.model import (Budget, Cluster, Config, KeyEntry, Rate, Routing, TrafficLimits, Upstream,
                                         UpstreamHost)
    from guardproxy.engine.server import GuardServer
    from guardproxy.testing.fake_ollama import FakeOllama
    fakes = [await FakeOllama.start(ADDRESSES[i] if hosts > 1 else "127.0.0.1") for i in range(hosts)]
    port = fakes[0].port
    if mode == "proxy":
        upstreams = tuple(UpstreamHost(f"gpu-{i}", Upstream(f.host, f.port), max_concurrent=64)
                          for i, f in enumerate(fakes)) if hosts > 1 else ()
        key = KeyEntry("b", hashlib.sha256(KEY.encode()).digest(), **FEATURES[feature])  # type: ignore[arg-type]
        extra: dict[str, object] = {}
        if feature == "alias":
            extra["aliases"] = (("llama3.2", "llama3.2:latest"),)
        if limits != "none":
            key = KeyEntry("b", key.sha256, rate=Rate(1_000_000, 1.0), max_concurrent=100_000,
                           tokens=Budget(10 ** 12, 86400.0, "day"))
            extra["limits"] = TrafficLimits(per_ip=Rate(1_000_000, 1.0), max_concurrent=100_000, max_queue=100_000)
        if limits == "redis":
            extra["cluster"] = Cluster(redis=f"redis://127.0.0.1:{redis_port}/0")
        config = Config(path=None, listen_host="127.0.0.1", listen_port=0, upstream=Upstream(fakes[0].host, port),
                        keys=(key,), access_log="", upstreams=upstreams, routing=Routing(health_interval=3600.0),
                        **extra)  # type: ignore[arg-type]
        gate = GuardServer(config)
        await gate.start()
        await gate.health.next_round()
        port = gate.port
    raw = request(kind)
    reader, writer = await asyncio.open_connection("127.0.0.1" if mode == "proxy" else fakes[0].host, port)
    for _ in range(n):
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        if b"chunked" in head.lower():
            while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                await reader.readexactly(size + 2)
            await reader.readexactly(2)
        else:
            await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))
    writer.close()


LIMITS = ["none", 0, "none"]   # --limits, the redis-server's port with "redis", --feature


def collected(mode: str, hosts: int, kind: str, n: int) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          __file__, "--child", mode, str(hosts), kind, str(n), str(LIMITS[0]), str(LIMITS[1]),
                          str(LIMITS[2])],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(m.group(1))


def per_request(hosts: int, kind: str, n: int) -> int:
    p1, p2 = collected("proxy", hosts, kind, n), collected("proxy", hosts, kind, 2 * n)
    d1, d2 = collected("direct", hosts, kind, n), collected("direct", hosts, kind, 2 * n)
    return ((p2 - p1) - (d2 - d1)) // n


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import uvloop
        _, mode, hosts, kind, n, limits, redis_port, feature = sys.argv[1:]
        uvloop.run(child(mode, int(hosts), kind, int(n), limits, int(redis_port), feature))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="get,version,gen")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--one", action="store_true", help="one host only")
    ap.add_argument("--limits", choices=("none", "in-process", "redis"), default="none")
    ap.add_argument("--feature", choices=sorted(FEATURES), default="none")
    args = ap.parse_args()
    LIMITS[0] = args.limits
    LIMITS[2] = args.feature
    if args.limits == "redis":
        import tempfile
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from redis_client import start_redis
        from targets import free_port
        LIMITS[1] = free_port()
        redis = start_redis(int(LIMITS[1]), None, tempfile.mkdtemp(prefix="gp-instructions-"))
        try:
            return _report(args)
        finally:
            redis.kill()
    return _report(args)


def _report(args: argparse.Namespace) -> int:
    for kind in args.kinds.split(","):
        one = per_request(1, kind, args.requests)
        if args.one:
            print(f"{kind:8} 1 host {one:8,} instructions per request", flush=True)
            continue
        three = per_request(3, kind, args.requests)
        print(f"{kind:8} 1 host {one:8,} instructions per request; 3 hosts {three:8,} ({three - one:+,})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
