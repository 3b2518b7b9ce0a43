"""guardproxy side by side with nginx and Caddy, in front of the fake Ollama.

    python benchmarks/bench.py                 # everything, twice (~6 min on 2 cores)
    python benchmarks/bench.py --quick         # seconds: a smoke run of the harness
    python benchmarks/bench.py --targets direct,guardproxy --scenarios 2,3 --runs 1

The proxy runs on core 0 (`taskset -c 0`); this process (the clients) and the
fake Ollama run on core 1.  Proxy CPU and RSS come from /proc/PID of the
proxy process alone.  Every response is checked against what the fake sends
directly (bytes hashed, clock fields masked), so a fast wrong answer fails
the run instead of winning it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scenarios import (DIRECT_PORT, QUICK, Golden, Result, Sizes, pct, s1_small, s2_tokens, s3_realistic,  # noqa: E402
                       s4_bulk, s5_many_slow, s6_slow_reader, s7_two_hosts)
from loadgen import CheckFailed  # noqa: E402
from targets import ACCESS_LOGS, CLIENT_CORE, KEY, TARGETS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


SCENARIOS: dict[int, tuple[str, Callable[..., Awaitable[Result]], str, str | None]] = {
    # number: (title, runner, headline figure, cost figure)
    1: ("Small requests: GET /api/tags with the key, {s1_conns} connections, {s1_secs:g} s",
        s1_small, "req/s", "proxy CPU µs/req"),
    2: ("Token throughput: {s2_streams} concurrent streams x {s2_tokens} tokens, no delay, {s2_secs:g} s",
        s2_tokens, "tokens/s", "proxy CPU µs/token"),
    3: ("Realistic generation: {s3_streams} streams x {s3_tokens} tokens at {s3_delay_ms:g} ms per token, "
        "starts spread over {s3_spread:g} s",
        s3_realistic, "p99 ms", "proxy CPU µs/token"),
    4: ("Bulk: {s4_bytes_mib:g} MiB JSON responses (/api/embed), {s4_conns} connections, {s4_secs:g} s",
        s4_bulk, "MB/s", "proxy CPU ms/MB"),
    5: ("Many slow streams: {s5_streams} concurrent streams x {s5_tokens} tokens at {s5_delay_ms:g} ms per token",
        s5_many_slow, "proxy RSS KiB/stream", "proxy CPU µs/token"),
    6: ("Slow reader: one client stops reading for {s6_stall:g} s while the upstream sends {s6_mib:g} MiB",
        s6_slow_reader, "proxy RSS growth KiB while stalled", None),
    7: ("Two hosts, one twice as fast: {s7_streams} clients loop over {s7_tokens}-token generations for "
        "{s7_secs:g} s (guardproxy only)", s7_two_hosts, "fast/slow", "proxy CPU µs/req"),
}

def title(n: int, sz: Sizes) -> str:
    d = dict(vars(sz), s3_delay_ms=sz.s3_delay * 1000, s5_delay_ms=sz.s5_delay * 1000,
             s4_bytes_mib=sz.s4_bytes / 2**20, s6_mib=sz.s6_bytes / 2**20)
    return SCENARIOS[n][0].format(**d)


# --- output -------------------------------------------------------------------

def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v != v:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "–"
    return f"{a / b:.2f}x"


def table(n: int, sz: Sizes, results: dict[str, Result]) -> str:
    _, _, head, cost = SCENARIOS[n]
    cols: list[str] = []
    for r in results.values():
        for k in r.figures:
            if k not in cols:
                cols.append(k)
    extra = [f"{head} vs direct", f"{head} vs nginx"] + (["CPU vs nginx"] if cost else [])
    lines = [f"### {n}. {title(n, sz)}", "", "| target | " + " | ".join(cols + extra) + " |",
             "|---" * (len(cols) + len(extra) + 1) + "|"]
    direct = results.get("direct")
    nginx = results.get("nginx")
    for name, r in results.items():
        row = [fmt(r.figures.get(c)) for c in cols]
        h = r.figures.get(head)
        row.append(ratio(h, direct.figures.get(head) if direct else None))
        row.append(ratio(h, nginx.figures.get(head) if nginx else None))
        if cost:
            row.append(ratio(r.figures.get(cost), nginx.figures.get(cost) if nginx else None))
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    notes = [f"{name}: {r.note}" for name, r in results.items() if r.note]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


SUMMARY = [  # (scenario, figure, column title)
    (1, "req/s", "1: req/s"), (1, "proxy CPU µs/req", "1: CPU µs/req"),
    (2, "proxy CPU µs/token", "2: CPU µs/token"), (3, "p99 ms", "3: token p99 ms"),
    (3, "TTFT p99 ms", "3: TTFT p99 ms"), (4, "proxy CPU ms/MB", "4: CPU ms/MB"),
    (5, "proxy RSS KiB/stream", "5: KiB/stream"), (5, "proxy CPU µs/token", "5: CPU µs/token"),
    (5, "steady-state µs/token", "5: steady µs/token"), (6, "proxy RSS growth KiB while stalled", "6: RSS growth KiB"),
    (7, "fast/slow", "7: fast/slow host"),
]


def summary(results: dict[int, dict[str, Result]]) -> str:
    cols = [c for c in SUMMARY if results.get(c[0])]
    names: list[str] = []
    for per_target in results.values():
        names += [n for n in per_target if n not in names]
    lines = ["| target | " + " | ".join(c[2] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in names:
        cells = []
        for n, fig, _ in cols:
            r = results[n].get(name)
            cells.append(fmt(r.figures.get(fig)) if r and r.figures else ("–" if not r else "failed"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The goals of the bare proxy path: (scenario, figure, the target it is held against, factor, wording).
GOALS = [
    (1, "proxy CPU µs/req", "caddy", 1.0, "(a) CPU per small request <= Caddy's"),
    (2, "proxy CPU µs/token", "nginx", 1.0, "(b) CPU per token, unpaced streams <= nginx's"),
    (4, "proxy CPU ms/MB", "caddy", 0.7, "(d) CPU per MB of bulk <= 0.7x Caddy's"),
    (5, "steady-state µs/token", "nginx", 1.0, "(e) CPU per token, 1,000 paced streams <= nginx's"),
    (5, "proxy CPU µs/token", "nginx", 1.0, "(e) the same, counting each stream's set-up <= nginx's"),
    (5, "proxy RSS KiB/stream", "nginx", 0.5, "(e) KiB per open stream <= half of nginx's"),
    (3, "p99 ms", "nginx", 1.0, "added per-token latency p99 <= nginx's"),
    (3, "p99 ms", "caddy", 1.0, "added per-token latency p99 <= Caddy's"),
]


def goals(results: dict[int, dict[str, Result]]) -> str:
    """Each goal met or missed in this run, with guardproxy's ratio to the target it is held against."""
    lines = ["| goal | guardproxy | against | ratio | |", "|---|---|---|---|---|"]
    for n, fig, other, factor, text in GOALS:
        gp = results.get(n, {}).get("guardproxy")
        them = results.get(n, {}).get(other)
        a = gp.figures.get(fig) if gp else None
        b = them.figures.get(fig) if them else None
        if a is None or b is None or not b or a != a or b != b:
            continue
        met = a <= b * factor
        lines.append(f"| {text} | {fmt(a)} | {fmt(b)} ({other}) | {a / b:.2f}x | {'met' if met else 'MISSED'} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def plot(results: dict[str, Result], path: Path, label: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install '.[bench]'): no plot"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in results.items():
        lat = sorted(x * 1000 for x in r.latencies)
        if not lat:
            continue
        ys = [(i + 1) / len(lat) for i in range(len(lat))]
        ax.plot(lat, ys, label=f"{name} (p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("per-token latency, upstream send -> client receive (ms, log scale)")
    ax.set_ylabel("fraction of tokens")
    ax.set_title(f"Scenario 3: per-token latency distribution ({label})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop
        uv = f"uvloop {uvloop.__version__}"
    except ImportError:
        uv = "no uvloop"
    return (f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {uv}")


# --- main ---------------------------------------------------------------------

async def run_once(run_no: int, names: list[str], scen: list[int], sz: Sizes, workdir: Path,
                   out: list[str], quick: bool) -> dict[int, dict[str, Result]]:
    results: dict[int, dict[str, Result]] = {n: {} for n in scen}
    # The golden responses come from a fake Ollama of their own.
    golden = Golden()
    ref = TARGETS["direct"](workdir / f"run{run_no}-ref")
    ref.start()
    DIRECT_PORT[0] = ref.port
    versions = []
    try:
        for name in names:
            t = TARGETS[name](workdir / f"run{run_no}")
            try:
                t.start()
            except Exception as e:
                out.append(f"- {name}: could not start ({e}), skipped")
                print(out[-1], flush=True)
                continue
            versions.append(f"{name}: {t.version}")
            try:
                for n in scen:
                    if (n == 6 and name == "direct") or (n == 7 and name != "guardproxy"):
                        continue  # no proxy, nothing to measure; several hosts: guardproxy's own
                    key = None if name == "direct" else KEY
                    t0 = time.monotonic()
                    try:
                        r = await SCENARIOS[n][1](t, sz, key, golden)
                    except CheckFailed as e:
                        r = Result(note=f"FAILED CHECK: {e}")
                    results[n][name] = r
                    print(f"  run {run_no} {name:<10} scenario {n}: "
                          + ", ".join(f"{k} {fmt(v)}" for k, v in r.figures.items())
                          + (f" [{r.note}]" if r.note else "") + f"  ({time.monotonic() - t0:.1f} s)", flush=True)
                    await asyncio.sleep(0.2 if quick else 0.5)  # let sockets in TIME_WAIT settle
            finally:
                t.stop()
    finally:
        ref.stop()
    out.append("Versions: " + "; ".join(versions) + ".")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: seconds, a few streams (a smoke run)")
    p.add_argument("--targets", default="direct,guardproxy,nginx,caddy")
    p.add_argument("--scenarios", default="1,2,3,4,5,6,7")
    p.add_argument("--runs", type=int, default=None, help="default 2 (1 with --quick)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the tables and plots go")
    p.add_argument("--no-logs", action="store_true",
                   help="every proxy without its access log: each proxy's own path (written to latest-nologs.md)")
    args = p.parse_args(argv)
    ACCESS_LOGS[0] = not args.no_logs
    sz = QUICK if args.quick else Sizes()
    runs = args.runs or (1 if args.quick else 2)
    scen = [int(s) for s in args.scenarios.split(",") if s.strip()]
    wanted = [s.strip() for s in args.targets.split(",") if s.strip()]
    for n in scen:
        if n not in SCENARIOS:
            p.error(f"no scenario {n}")
    names, skipped = [], []
    for name in wanted:
        if name not in TARGETS:
            p.error(f"no target {name!r} (known: {', '.join(TARGETS)})")
        why = TARGETS[name].available()
        (skipped.append(why) if why else names.append(name))
    pinning = ""
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity") and shutil.which("taskset"):
        os.sched_setaffinity(0, {int(CLIENT_CORE)})
        pinning = "proxy on core 0 (`taskset -c 0`); clients and fake Ollama on core 1"
    else:
        pinning = "NOT pinned (needs 2 CPUs and taskset): figures are noisier"
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    variant = "every access log off" if args.no_logs else "each proxy writes its access log to a file (the seed recipe)"
    doc = [f"# guardproxy benchmarks, {stamp}", "", f"Machine: {machine()}.", f"Pinning: {pinning}.",
           f"Access logs: {variant}.",
           "Proxy CPU and RSS: /proc/PID of the proxy process only. Every response hash-checked against "
           "the fake Ollama's own bytes.", ""]
    doc += [f"- {s}" for s in skipped]
    for s in skipped:
        print(f"note: {s}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="guardproxy-bench-") as tmp:
        for run_no in range(1, runs + 1):
            notes: list[str] = []
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                res = runner.run(run_once(run_no, names, scen, sz, Path(tmp), notes, args.quick))
            doc += ["", f"## Run {run_no} of {runs}", ""] + notes + ["", "Summary (details below):", "",
                                                                         summary(res)]
            met = goals(res)
            if met:
                doc += ["Goals of the bare proxy path, this run:", "", met]
            for n in scen:
                if res[n]:
                    doc.append(table(n, sz, res[n]))
            if 3 in scen and res[3]:
                suffix = ("-quick" if args.quick else "") + ("-nologs" if args.no_logs else "")
                png = args.out / f"scenario3-latency-run{run_no}{suffix}.png"
                why = plot(res[3], png, f"run {run_no}")
                doc.append(why or f"![scenario 3, run {run_no}]({png.name})\n")
    doc.append(f"Whole run: {time.monotonic() - started:.0f} s.")
    text = "\n".join(doc) + "\n"
    name = ("quick" if args.quick else "latest") + ("-nologs" if args.no_logs else "") + ".md"
    (args.out / name).write_text(text)
    print("\n" + text)
    print(f"written to {args.out / name}")
    failed = "FAILED CHECK" in text
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
