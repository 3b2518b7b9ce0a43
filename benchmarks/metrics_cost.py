"""What counting one request in the metrics costs, and a request ID (issue 14: at most 2 µs, else no prometheus_client).

    python benchmarks/metrics_cost.py            # 7 repeats of 200,000 updates per variant
    python benchmarks/metrics_cost.py --quick    # a smoke run

Each variant does what guardproxy does when a generation ends: one request
counted by (key, route, code), its duration and time to first byte observed
in histograms by route (the 16 buckets of engine/metrics.py), and its prompt
and completion tokens counted by (key, model).  Labels are realistic: a few
keys, routes and models, all of them seen before (the steady state).

  prometheus_client        labels(...) on every update, as its documentation shows
  prometheus_client cached the label children looked up once and kept in a dict by label tuple
  guardproxy               engine.metrics.Metrics.ended, the code the request path runs

The figure is the median of the repeats, per request.  The request-ID lines
time the ways to make a new ID (wire/heads.new_request_id took the first).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import timeit
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, Counter, Histogram  # noqa: E402

from guardproxy.decisions import routes  # noqa: E402
from guardproxy.engine.accesslog import LogRecord  # noqa: E402
from guardproxy.engine.metrics import BUCKETS, Metrics  # noqa: E402

LIMIT_US = 2.0
KEYS = ["laptop", "ci-runner", "alice", "bob"]
ROUTES = [routes.route_for(b"POST", p) for p in (b"/api/chat", b"/api/generate", b"/v1/chat/completions")]
MODELS = ["llama3.2", "qwen3:8b", "mistral:7b"]
KNOWN = frozenset({"llama3.2:latest", "qwen3:8b", "mistral:7b"})


def requests(n: int = 64) -> list[tuple[LogRecord, routes.Route, float, float]]:
    """Ended requests to count, cycled through: (record, route, duration, ttfb)."""
    rng = random.Random(14)
    out = []
    for _ in range(n):
        r = LogRecord.new("127.0.0.1", 300)
        r.key, r.status, r.model = rng.choice(KEYS), 200, rng.choice(MODELS)
        r.prompt_tokens, r.completion_tokens = 26, rng.randrange(1, 500)
        out.append((r, rng.choice(ROUTES), rng.uniform(0.05, 30.0), rng.uniform(0.01, 2.0)))
    return out


def with_prometheus_client(cached: bool) -> Callable[[], None]:
    reg = CollectorRegistry()
    req = Counter("guardproxy_requests", "", ["key", "route", "code"], registry=reg)
    tok = Counter("guardproxy_tokens", "", ["key", "model", "kind"], registry=reg)
    dur = Histogram("guardproxy_request_duration_seconds", "", ["route"], buckets=BUCKETS, registry=reg)
    ttfb = Histogram("guardproxy_time_to_first_byte_seconds", "", ["route"], buckets=BUCKETS, registry=reg)
    feed = itertools.cycle(requests())
    children: dict[Any, Any] = {}

    def labelled() -> None:
        r, route, d, t = next(feed)
        key, model = r.key or "-", r.model or "other"
        req.labels(key, route.name, str(r.status)).inc()
        dur.labels(route.name).observe(d)
        ttfb.labels(route.name).observe(t)
        tok.labels(key, model, "prompt").inc(r.prompt_tokens or 0)
        tok.labels(key, model, "completion").inc(r.completion_tokens or 0)

    def kept() -> None:
        r, route, d, t = next(feed)
        k = (r.key, route.name, r.status, r.model)
        c = children.get(k)
        if c is None:
            key, model = r.key or "-", r.model or "other"
            c = children[k] = (req.labels(key, route.name, str(r.status)), dur.labels(route.name),
                               ttfb.labels(route.name), tok.labels(key, model, "prompt"),
                               tok.labels(key, model, "completion"))
        c[0].inc()
        c[1].observe(d)
        c[2].observe(t)
        c[3].inc(r.prompt_tokens or 0)
        c[4].inc(r.completion_tokens or 0)

    return kept if cached else labelled


def with_guardproxy() -> Callable[[], None]:
    m = Metrics(lambda: KNOWN)
    feed = itertools.cycle(requests())
    ended = m.ended

    def one() -> None:
        r, route, d, t = next(feed)
        ended(r, route, d, t)
    return one


def feed_only() -> Callable[[], None]:
    """The harness alone (next() of the cycle and a call): taken off every figure above."""
    feed = itertools.cycle(requests())

    def one() -> None:
        r, route, d, t = next(feed)
    return one


def request_ids() -> dict[str, Callable[[], bytes]]:
    bits = random.Random().getrandbits
    prefix = os.urandom(6).hex().encode() + b"-"
    counter = itertools.count(1)
    return {"96 random bits, Mersenne Twister (taken)": lambda: b"%024x" % bits(96),
            "process prefix + counter": lambda: prefix + b"%x" % next(counter),
            "12 bytes of os.urandom": lambda: os.urandom(12).hex().encode()}


def per_call_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    number, repeat = (20_000, 3) if args.quick else (200_000, 7)
    base = per_call_us(feed_only(), number, repeat)
    print(f"metrics update at a request's end, per request ({repeat} x {number:,}; harness {base:.2f} µs taken off)")
    results = {}
    for name, fn in [("prometheus_client", with_prometheus_client(False)),
                     ("prometheus_client cached", with_prometheus_client(True)), ("guardproxy", with_guardproxy())]:
        results[name] = per_call_us(fn, number, repeat) - base
        print(f"  {name:<26} {results[name]:6.2f} µs")
    print("new request ID, per ID")
    for name, make in request_ids().items():
        print(f"  {name:<42} {per_call_us(make, number, repeat) * 1000:6.0f} ns")
    ok = results["guardproxy"] <= LIMIT_US
    print(f"guardproxy's update {'within' if ok else 'OVER'} the {LIMIT_US:g} µs budget")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
