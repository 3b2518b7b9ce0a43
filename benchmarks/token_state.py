"""Token budgets without Redis: the state file (chosen) against rebuilding from the access log at start-up.

    python benchmarks/token_state.py           # ~20 s
    python benchmarks/token_state.py --quick

Measures, in this process:
  spend        what a finished generation adds to the request path: the window addition and
               the pending row for the next flush (engine/state/local.py Budgets.spend)
  flush        one transaction writing the rows of a second's additions (20 keys), WAL, synchronous=NORMAL
  load         start-up: reading a state file of 200 keys x 60 buckets x 3 windows
  log rebuild  start-up the other way: reading access-log lines back (LogRecord.from_line, as `usage`
               does) and adding their tokens to the windows, per million lines
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guardproxy.config.model import Budget  # noqa: E402
from guardproxy.config.values import BUDGET_WINDOWS, parse_budget  # noqa: E402
from guardproxy.decisions.budget import BUCKETS, TokenBook, bucket_seconds  # noqa: E402
from guardproxy.engine.accesslog import LogRecord  # noqa: E402
from guardproxy.engine.state.tokenfile import TokenFile  # noqa: E402

NOW = 1_800_000_000.0


def per_call(fn: object, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    budget = parse_budget("200000/day")
    with tempfile.TemporaryDirectory() as tmp:
        f = TokenFile(Path(tmp) / "s.sqlite3")
        book = TokenBook()
        clock = [NOW]

        def spend() -> None:
            clock[0] += 0.01
            b = book.add("key", budget, clock[0], 300)
            f.add("key", budget.unit, b, 300)
        spend_us = per_call(spend, 200_000 // scale) * 1e6
        f.flush(BUDGET_WINDOWS, clock[0])

        def flush() -> None:
            for k in range(20):
                f.add(f"key{k}", budget.unit, int(clock[0] // bucket_seconds(budget.window)), 300)
            f.flush(BUDGET_WINDOWS, clock[0])
        flush_ms = per_call(flush, 500 // scale) * 1e3

        for k in range(200):   # a full state file: 200 keys, every bucket of every window
            for unit, window in BUDGET_WINDOWS.items():
                current = int(NOW // bucket_seconds(window))
                for b in range(current - BUCKETS + 1, current + 1):
                    f.add(f"k{k}", unit, b, 1000)
        f.flush(BUDGET_WINDOWS, NOW)
        load_ms = per_call(lambda: f.load(TokenBook(), BUDGET_WINDOWS, NOW), 20 // min(scale, 20) or 1) * 1e3
        f.close()

    line = json.dumps({"time": "2027-01-15T10:00:00Z", "client": "203.0.113.7", "method": "POST",
                       "path": "/api/chat", "status": 200, "bytes_in": 312, "bytes_out": 5120,
                       "duration_ms": 2310.4, "ttfb_ms": 180.2, "key": "vercel-app", "outcome": "ok",
                       "model": "llama3.2", "prompt_tokens": 26, "completion_tokens": 290}, separators=(",", ":"))
    rebuilt = TokenBook()
    day = Budget(200000, 86400.0, "day")

    def rebuild_one() -> None:
        rec = LogRecord.from_line(line)
        assert rec is not None and rec.key is not None
        rebuilt.add(rec.key, day, NOW, (rec.prompt_tokens or 0) + (rec.completion_tokens or 0))
    rebuild_s = per_call(rebuild_one, 200_000 // scale) * 1e6

    print(f"spend (request path, per generation)   {spend_us:6.2f} µs")
    print(f"flush (20 keys, once a second at most) {flush_ms:6.2f} ms")
    print(f"load at start-up (200 keys, full)      {load_ms:6.1f} ms")
    print(f"rebuild from the access log            {rebuild_s:6.2f} s per million lines "
          f"(a gate at 10 requests/s writes 26 million lines in 30 days)")


if __name__ == "__main__":
    main()
