"""Token budgets: prompt plus completion tokens over a sliding window, per key.  Pure: no asyncio.

A window is kept as BUCKETS buckets of window/BUCKETS seconds each (an hour: minutes; a day:
24 minutes; a month: 12 hours), indexed by wall-clock time, so the totals mean the same in a
state file after a restart and in Redis, whose scripts (engine/state/scripts.py) do the same
arithmetic.  The window slides a bucket at a time: its total is the buckets of the last
`window` seconds, the current one included.  A key at or over its budget is refused until
enough of its oldest buckets have left the window; a request's size is known only when it
ends, so the one request admitted just under the budget may overshoot it.
"""

from __future__ import annotations

from typing import Iterable

from ..config.model import Budget

BUCKETS = 60
# A generation whose final counts never came (a client that hung up, an OpenAI stream without
# stream_options.include_usage) is charged an estimate from its bytes instead: the request it
# sent at ~4 bytes a token, and what it received at one token per ~100 bytes, the size of Ollama's
# own smallest per-token line (SSE events are larger, so those are charged less than they used).
REQUEST_BYTES_PER_TOKEN = 4
RESPONSE_BYTES_PER_TOKEN = 100


def bucket_seconds(window: float) -> float:
    return window / BUCKETS


class TokenWindow:
    """One key's tokens over one window length: bucket index -> tokens, and their sum."""

    __slots__ = ("size", "buckets", "sum", "_current")

    def __init__(self, window: float) -> None:
        self.size = bucket_seconds(window)
        self.buckets: dict[int, int] = {}
        self.sum = 0
        self._current = 0   # the bucket of the last trim: buckets leave only when it changes

    def _trim(self, now: float) -> int:
        current = int(now // self.size)
        if current != self._current:
            self._current = current
            for b in [b for b in self.buckets if b <= current - BUCKETS]:
                self.sum -= self.buckets.pop(b)
        return current

    def total(self, now: float) -> int:
        self._trim(now)
        return self.sum

    def add(self, now: float, tokens: int) -> int:
        """Count `tokens` now; returns the bucket they went to."""
        b = self._trim(now)
        self.buckets[b] = self.buckets.get(b, 0) + tokens
        self.sum += tokens
        return b

    def retry_after(self, now: float, limit: int) -> float:
        """0 while the window's total is under `limit`, else the seconds until it will be."""
        left = self.total(now)
        if left < limit:
            return 0.0
        for b in sorted(self.buckets):
            left -= self.buckets[b]
            if left < limit:
                return (b + BUCKETS) * self.size - now
        return 0.0  # unreachable: with every bucket gone the total is 0 < limit


class TokenBook:
    """Every key's window.  A key whose budget changes to another window length starts a new count."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, str], TokenWindow] = {}

    def window(self, name: str, budget: Budget) -> TokenWindow:
        w = self.windows.get((name, budget.unit))
        if w is None:
            w = self.windows[(name, budget.unit)] = TokenWindow(budget.window)
        return w

    def retry_after(self, name: str, budget: Budget, now: float) -> float:
        return self.window(name, budget).retry_after(now, budget.tokens)

    def used(self, name: str, budget: Budget, now: float) -> int:
        return self.window(name, budget).total(now)

    def add(self, name: str, budget: Budget, now: float, tokens: int) -> int:
        return self.window(name, budget).add(now, tokens)

    def load(self, rows: Iterable[tuple[str, str, int, int]], windows: dict[str, float]) -> None:
        """Rows (key, unit, bucket, tokens), as a state file keeps them; units not in `windows` are skipped."""
        for name, unit, bucket, tokens in rows:
            if unit in windows:
                w = self.windows.setdefault((name, unit), TokenWindow(windows[unit]))
                w.buckets[bucket] = w.buckets.get(bucket, 0) + tokens
                w.sum += tokens
                w._current = 0   # a loaded bucket may be old: trim at the next look


def charged(prompt: int | None, completion: int | None, status: int, bytes_in: int, bytes_out: int) -> int:
    """The tokens a finished generation costs: its final counts, or when it had none, an estimate.

    Only a generation that ran is estimated: a 200 (or a 499, the client gone mid-stream) with
    bytes sent back; an error answer of the upstream's, or none at all, costs nothing.
    """
    if prompt is not None or completion is not None:
        return (prompt or 0) + (completion or 0)
    if status not in (200, 499) or bytes_out <= 0:
        return 0
    return -(-bytes_in // REQUEST_BYTES_PER_TOKEN) + -(-bytes_out // RESPONSE_BYTES_PER_TOKEN)
