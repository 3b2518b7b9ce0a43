"""The scenarios of bench.py, each one coroutine against one target, and what they share:
sizes, results, the proxy's CPU meter, and the golden answers every response is checked against."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from loadgen import (CheckFailed, Client, body_digest, http_request,
                     stream_digest, token_latencies)
from targets import CLIENT_CORE, Target, cpu_seconds, pinned, rss_kib
import spread

DIRECT_PORT = [0]  # the fake Ollama's port, once bench.py has started it


@dataclass
class Sizes:
    """How big each scenario is; --quick shrinks everything to seconds."""
    s1_conns: int = 64
    s1_secs: float = 10.0
    s2_streams: int = 32
    s2_tokens: int = 500
    s2_secs: float = 6.0
    s3_streams: int = 256
    s3_tokens: int = 200
    s3_delay: float = 0.020
    s3_spread: float = 1.0
    s4_conns: int = 8
    s4_bytes: int = 1 << 20
    s4_secs: float = 5.0
    s5_streams: int = 1000
    s5_tokens: int = 40
    s5_delay: float = 0.100
    s6_bytes: int = 64 << 20
    s6_stall: float = 3.0
    s7_streams: int = 32
    s7_secs: float = 6.0
    s7_tokens: int = 20
    s7_delay: float = 0.010


QUICK = Sizes(s1_conns=8, s1_secs=1.0, s2_streams=4, s2_tokens=100, s2_secs=1.0, s3_streams=16,
              s3_tokens=20, s3_spread=0.1, s4_conns=2, s4_bytes=1 << 20, s4_secs=1.0, s5_streams=50, s5_tokens=5,
              s6_bytes=8 << 20, s6_stall=0.5, s7_streams=8, s7_secs=1.0, s7_tokens=5)


@dataclass
class Result:
    figures: dict[str, float | None] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # scenario 3 only
    note: str = ""


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Meter:
    """CPU seconds of the proxy process between start() and stop(); nothing for direct."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> "Meter":
        self._c0 = cpu_seconds(self.pid) if self.pid else 0.0
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._t0
        if self.pid:
            self.cpu = cpu_seconds(self.pid) - self._c0


def per(meter: Meter, units: float, scale: float) -> float | None:
    if not meter.pid or not units:
        return None
    return meter.cpu / units * scale


# --- golden responses: what the fake sends with no proxy in between -------------

class Golden:
    def __init__(self) -> None:
        self.digests: dict[bytes, Any] = {}

    async def learn(self, direct_port: int, raw: bytes, stream: bool, fetch: bytes | None = None) -> None:
        """Remember the direct answer to raw (fetched as `fetch`, e.g. the same request without delay)."""
        c = await Client.connect(direct_port)
        try:
            resp = await c.request(http_request_without_key(fetch or raw))
        finally:
            c.close()
        if resp.status != 200:
            raise RuntimeError(f"fake Ollama answered {resp.status} to a benchmark request")
        self.digests[raw] = stream_digest(resp.body) if stream else body_digest(resp.body)

    def check(self, raw: bytes, resp: Any, stream: bool) -> None:
        if resp.status != 200:
            raise CheckFailed(f"status {resp.status}")
        got = stream_digest(resp.body) if stream else body_digest(resp.body)
        if got != self.digests[raw]:
            raise CheckFailed("response bytes differ from the upstream's")


def http_request_without_key(raw: bytes) -> bytes:
    return re.sub(rb"X-API-Key: [^\r]*\r\n", b"", raw)


def gen_request(tokens: int, delay: float, key: str | None) -> bytes:
    body = b'{"model":"llama3.2","prompt":"Why is the sky blue?","options":{"num_predict":%d},"fake_delay":%s}' % (
        tokens, repr(delay).encode())
    return http_request("POST", "/api/generate", key, body)


# --- the scenarios ------------------------------------------------------------

async def s1_small(t: Target, sz: Sizes, key: str | None, golden: Golden) -> Result:
    raw = http_request("GET", "/api/tags", key)
    await golden.learn(DIRECT_PORT[0], raw, stream=False)
    # Check the bytes first (wrk does not look at bodies).
    clients = [await Client.connect(t.port) for _ in range(4)]
    for c in clients:
        for _ in range(8):
            golden.check(raw, await c.request(raw), stream=False)
        c.close()
    if shutil.which("wrk"):
        argv = ["wrk", "-t1", f"-c{sz.s1_conns}", f"-d{sz.s1_secs:g}s", "--latency",
                f"http://127.0.0.1:{t.port}/api/tags"]
        if key:
            argv[1:1] = ["-H", f"X-API-Key: {key}"]
        with Meter(t.pid) as m:
            proc = await asyncio.create_subprocess_exec(*pinned(CLIENT_CORE, argv), stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
        text = out.decode()
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if bad:
            raise CheckFailed(f"wrk saw {bad.group(1)} non-2xx responses")
        reqs = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
        p50 = _wrk_ms(re.search(r"50%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
        p99 = _wrk_ms(re.search(r"99%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
        tool = "wrk"
    else:
        lat: list[float] = []
        count = [0]
        deadline = time.monotonic() + sz.s1_secs

        async def worker() -> None:
            c = await Client.connect(t.port)
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                resp = await c.request(raw)
                lat.append(time.perf_counter() - t0)
                golden.check(raw, resp, stream=False)
                count[0] += 1
            c.close()
        with Meter(t.pid) as m:
            await asyncio.gather(*(worker() for _ in range(sz.s1_conns)))
        reqs, p50, p99 = count[0], pct(lat, 50) * 1000, pct(lat, 99) * 1000
        tool = "asyncio client"
    return Result({"req/s": reqs / m.elapsed, "p50 ms": p50, "p99 ms": p99,
                   "proxy CPU µs/req": per(m, reqs, 1e6)}, note=f"load from {tool}")


def _wrk_ms(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


async def _stream_workers(t: Target, n: int, raw: bytes, golden: Golden, *, rounds: int | None,
                          secs: float | None, track: bool, stagger: float = 0.0,
                          on_open: Callable[[], None] | None = None) -> tuple[int, list[float], list[float]]:
    """n concurrent keep-alive streams; returns (streams completed, token latencies, ttfts)."""
    done = [0]
    lats: list[float] = []
    ttfts: list[float] = []
    deadline = time.monotonic() + secs if secs else None

    async def worker(i: int) -> None:
        if stagger:
            await asyncio.sleep(stagger * i / n)
        c = await Client.connect(t.port, track=track)
        k = 0
        while (rounds is None or k < rounds) and (deadline is None or time.monotonic() < deadline):
            resp = await c.request(raw)
            golden.check(raw, resp, stream=True)
            if track:
                lat, ttft = token_latencies(resp)
                lats.extend(lat)
                ttfts.append(ttft)
            done[0] += 1
            k += 1
        c.close()
    await asyncio.gather(*(worker(i) for i in range(n)))
    return done[0], lats, ttfts


async def s2_tokens(t: Target, sz: Sizes, key: str | None, golden: Golden) -> Result:
    raw = gen_request(sz.s2_tokens, 0.0, key)
    await golden.learn(DIRECT_PORT[0], raw, stream=True)
    with Meter(t.pid) as m:
        streams, _, _ = await _stream_workers(t, sz.s2_streams, raw, golden, rounds=None, secs=sz.s2_secs, track=False)
    tokens = streams * sz.s2_tokens
    return Result({"tokens/s": tokens / m.elapsed, "proxy CPU µs/token": per(m, tokens, 1e6)})


async def s3_realistic(t: Target, sz: Sizes, key: str | None, golden: Golden) -> Result:
    raw = gen_request(sz.s3_tokens, sz.s3_delay, key)
    # The bytes do not depend on the pace, so the reference is fetched without it.
    await golden.learn(DIRECT_PORT[0], raw, stream=True, fetch=gen_request(sz.s3_tokens, 0.0, key))
    with Meter(t.pid) as m:
        streams, lats, ttfts = await _stream_workers(t, sz.s3_streams, raw, golden, rounds=1, secs=None,
                                                     track=True, stagger=sz.s3_spread)
    tokens = streams * sz.s3_tokens
    return Result({"token latency p50 ms": pct(lats, 50) * 1000, "p99 ms": pct(lats, 99) * 1000,
                   "TTFT p50 ms": pct(ttfts, 50) * 1000, "TTFT p99 ms": pct(ttfts, 99) * 1000,
                   "proxy CPU µs/token": per(m, tokens, 1e6)}, latencies=lats)


async def s4_bulk(t: Target, sz: Sizes, key: str | None, golden: Golden) -> Result:
    body = b'{"model":"nomic-embed-text","input":"bulk","fake_size":%d}' % sz.s4_bytes
    raw = http_request("POST", "/api/embed", key, body)
    await golden.learn(DIRECT_PORT[0], raw, stream=False)
    total = [0]
    deadline = time.monotonic() + sz.s4_secs

    async def worker() -> None:
        c = await Client.connect(t.port)
        while time.monotonic() < deadline:
            resp = await c.request(raw)
            golden.check(raw, resp, stream=False)
            total[0] += len(resp.body)
        c.close()
    with Meter(t.pid) as m:
        await asyncio.gather(*(worker() for _ in range(sz.s4_conns)))
    mb = total[0] / 1e6
    return Result({"MB/s": mb / m.elapsed, "proxy CPU ms/MB": per(m, mb, 1e3)})


async def s5_many_slow(t: Target, sz: Sizes, key: str | None, golden: Golden) -> Result:
    raw = gen_request(sz.s5_tokens, sz.s5_delay, key)
    # The bytes do not depend on the pace, so the reference is fetched without it.
    await golden.learn(DIRECT_PORT[0], raw, stream=True, fetch=gen_request(sz.s5_tokens, 0.0, key))
    base = rss_kib(t.pid) if t.pid else 0
    peak = [base]
    stop = asyncio.Event()
    stagger = sz.s5_delay * 5
    # Steady state: every stream open, none finished yet; no connection set-up in it.
    window = (stagger + 0.3, sz.s5_tokens * sz.s5_delay - 0.2)
    marks: list[tuple[float, int]] = []
    t_start = time.monotonic()

    async def sample() -> None:
        while not stop.is_set():
            if t.pid:
                peak[0] = max(peak[0], rss_kib(t.pid))
                since = time.monotonic() - t_start
                if len(marks) < 2 and since >= window[len(marks)]:
                    marks.append((cpu_seconds(t.pid), Client.reads))
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass
    sampler = asyncio.create_task(sample())
    with Meter(t.pid) as m:
        # Opened over one token interval, so the whole crowd is open at once mid-run.
        streams, _, _ = await _stream_workers(t, sz.s5_streams, raw, golden, rounds=1, secs=None,
                                              track=False, stagger=stagger)
    stop.set()
    await sampler
    tokens = streams * sz.s5_tokens
    steady = None
    if len(marks) == 2 and window[1] - window[0] >= 1.0 and marks[1][1] > marks[0][1]:
        steady = (marks[1][0] - marks[0][0]) / (marks[1][1] - marks[0][1]) * 1e6
    return Result({"streams": streams, "proxy RSS KiB/stream": (peak[0] - base) / streams if t.pid else None,
                   "proxy RSS MiB peak": peak[0] / 1024 if t.pid else None,
                   "proxy CPU µs/token": per(m, tokens, 1e6), "steady-state µs/token": steady,
                   "wall s": m.elapsed})


async def s6_slow_reader(t: Target, sz: Sizes, key: str | None, golden: Golden) -> Result:
    # An embedding answer of the size wanted: a route of Ollama's, which every key may use.
    body = b'{"model":"nomic-embed-text","input":"bulk","fake_size":%d}' % sz.s6_bytes
    raw = http_request("POST", "/api/embed", key, body)
    await golden.learn(DIRECT_PORT[0], raw, stream=False)
    c = await Client.connect(t.port)
    base = rss_kib(t.pid) if t.pid else 0
    peak = base
    await c.request(raw, wait_head_only=True)
    c.transport.pause_reading()  # type: ignore[union-attr]
    t_end = time.monotonic() + sz.s6_stall
    while time.monotonic() < t_end:
        if t.pid:
            peak = max(peak, rss_kib(t.pid))
        await asyncio.sleep(0.05)
    held = len(c.buf)
    t0 = time.perf_counter()
    c.transport.resume_reading()  # type: ignore[union-attr]
    await c.waiter  # type: ignore[misc]
    drain = time.perf_counter() - t0
    resp = c.response(0.0)
    c.close()
    golden.check(raw, resp, stream=False)
    return Result({"proxy RSS growth KiB while stalled": (peak - base) if t.pid else None,
                   "client held KiB at stall": held / 1024, "drain MB/s after": len(resp.body) / 1e6 / drain})


async def s7_two_hosts(t: Target, sz: Sizes, key: str | None, golden: Golden) -> Result:
    figures, note = await spread.two_hosts(sz.s7_streams, sz.s7_secs, sz.s7_tokens, sz.s7_delay, golden,
                                           DIRECT_PORT[0], t.workdir / "two-hosts", Meter)
    return Result(figures, note=note)
