"""Where a proxy's CPU goes in one bench.py scenario: `perf record` of the proxy process alone.

    python benchmarks/profile.py --scenario 1                     # guardproxy, small requests
    python benchmarks/profile.py --scenario 2 --target nginx      # a peer, for comparison
    python benchmarks/profile.py --scenario 5 --top 40

The target is started as bench.py starts it (pinned, access log off), the scenario runs once at
its full size while `perf record` samples the proxy's process (user and kernel), and the
samples are summed three ways: by shared object (kernel, libpython, uvloop, libc, ...), by
symbol, and for guardproxy by Python-level caller family, so a gap to a peer can be read as
"system calls", "event loop", "interpreter" or "our own code".  Needs `perf` (Debian's
`linux-perf`) and root or kernel.perf_event_paranoid <= 1 for the kernel's share.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import SCENARIOS, title as bench_title  # noqa: E402
from scenarios import DIRECT_PORT, Golden, Sizes  # noqa: E402
from targets import ACCESS_LOGS, KEY, TARGETS  # noqa: E402

# A shared object's family: what part of the stack its time belongs to.
FAMILIES = (
    ("kernel", re.compile(r"\[kernel|vmlinux|\[unknown\]")),
    ("uvloop / libuv", re.compile(r"uvloop|libuv|loop\.cpython")),
    ("interpreter", re.compile(r"libpython|python3")),
    ("libc", re.compile(r"libc[.-]|ld-linux")),
    ("h11 / other extensions", re.compile(r"\.so")),
)


def family(dso: str) -> str:
    for name, pattern in FAMILIES:
        if pattern.search(dso):
            return name
    return dso or "?"


def _perf_rows(data: Path, sort: str) -> list[list[str]]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
                          "-g", "none", "--percent-limit", "0"], capture_output=True, text=True, check=False).stdout
    return [line.split(None, 1 if sort == "dso" else 3) for line in out.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and line.strip()[0].isdigit()]


def report(data: Path, top: int) -> str:
    by_family: Counter[str] = Counter()
    for pct, dso in _perf_rows(data, "dso"):
        by_family[family(dso.strip())] += float(pct.rstrip("%"))
    rows = [(float(r[0].rstrip("%")), r[1], r[3].strip()) for r in _perf_rows(data, "dso,sym") if len(r) == 4]
    lines = ["| part | share of the proxy's CPU samples |", "|---|---|"]
    lines += [f"| {name} | {pct:.1f} % |" for name, pct in by_family.most_common()]
    lines += ["", f"Top {top} symbols:", "", "| share | object | symbol |", "|---|---|---|"]
    lines += [f"| {pct:.2f} % | {dso} | `{sym[:70]}` |" for pct, dso, sym in rows[:top]]
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> str:
    golden = Golden()
    ref = TARGETS["direct"](workdir / "ref")
    ref.start()
    DIRECT_PORT[0] = ref.port
    target = TARGETS[args.target](workdir)
    target.start()
    data = workdir / "perf.data"
    stacks = workdir / "stacks.txt"
    try:
        assert target.pid is not None or args.target == "direct"
        perf = subprocess.Popen(["perf", "record", "-q", "-F", str(args.frequency), "-o", str(data),
                                 "-p", str(target.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spy = None
        if args.python:
            spy = subprocess.Popen([args.python, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o",
                                    str(stacks), "-p", str(target.pid)] + (["--native"] if args.native else []),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            result = await SCENARIOS[args.scenario][1](target, Sizes(), None if args.target == "direct" else KEY,
                                                       golden)
        finally:
            perf.send_signal(2)
            perf.wait(30)
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
    finally:
        target.stop()
        ref.stop()
    figures = ", ".join(f"{k} {v:.3g}" for k, v in result.figures.items() if v is not None)
    title = bench_title(args.scenario, Sizes())
    text = f"## {args.target}, scenario {args.scenario}: {title}\n\n{figures}\n\n" + report(data, args.top)
    if args.python and stacks.exists():
        text += "\n\n" + python_report(stacks, args.top)
    return text


_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def python_report(stacks: Path, top: int) -> str:
    """py-spy's collapsed stacks summed by Python function: its own samples, and with what it calls."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        for frame in frames.split(";")[1:]:
            m = _FRAME.match(frame)
            if m:
                path = m.group(2)
                short = path.split("site-packages/")[-1].split("/lib/python3.11/")[-1].split("/guardproxy/")[-1]
                names.append(f"{m.group(1)} ({short})")
        if names:
            own[names[-1]] += n
            for name in set(names):
                inclusive[name] += n
    if not total:
        return "py-spy: no samples"
    lines = ["Python functions (py-spy, the loop's thread): own samples, and with their callees", "",
             "| own | with callees | function |", "|---|---|---|"]
    for name, n in own.most_common(top):
        lines.append(f"| {100 * n / total:.1f} % | {100 * inclusive[name] / total:.1f} % | `{name}` |")
    lines += ["", "| with callees | function |", "|---|---|"]
    for name, n in inclusive.most_common(top + 15):
        lines.append(f"| {100 * n / total:.1f} % | `{name}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", type=int, default=1, choices=sorted(SCENARIOS))
    p.add_argument("--target", default="guardproxy", choices=sorted(TARGETS))
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--frequency", type=int, default=1999, help="samples per second")
    p.add_argument("--python", nargs="?", const=shutil.which("py-spy") or "py-spy", default=None,
                   metavar="PY_SPY", help="also sample Python stacks with py-spy (pip install py-spy)")
    p.add_argument("--native", action="store_true", help="py-spy: C frames too (uvloop, the interpreter)")
    args = p.parse_args(argv)
    if shutil.which("perf") is None:
        p.error("`perf` is not installed (Debian: linux-perf)")
    if TARGETS[args.target].available():
        p.error(TARGETS[args.target].available() or "")
    ACCESS_LOGS[0] = False
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with tempfile.TemporaryDirectory(prefix="guardproxy-profile-") as tmp:
        with asyncio.Runner(loop_factory=factory) as runner:
            print(runner.run(run(args, Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
