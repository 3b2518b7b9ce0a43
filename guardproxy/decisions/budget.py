"""Token budgets: prompt plus completion tokens over a sliding window, per key.  Pure: no asyncio.

A window is kept as BUCKETS buckets of window/BUCKETS seconds each (an hour: minutes; a day:
24 minutes; a month: 12 hours), indexed by wall-clock time, so the totals mean the same in a
state file after a restart and in Redis, whose scripts (engine/state/scripts.py) do the same
arithmetic.  The window slides a bucket at a time: its total is the buckets of the last
`window` seconds, the current one included.

A generation is admitted by reservation: it reserves its worst case (`reservation`: its output
cap plus its prompt estimated from the body's size) and is refused when that does not fit in
what the window has left after the reservations of the requests still running (`fits`).  When
it ends, its reservation is released and its real counts are added.  So the budget is exceeded
only by what running requests spend beyond their own reservations (a prompt longer than its
estimate, mostly): see `fits`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from ..config.model import Budget
from . import routes
from .json_members import fold

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
        if limit <= 0:
            return 0.0   # never, by the window alone
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

    def retry_after(self, name: str, budget: Budget, now: float, held: int = 0, need: int = 0) -> float:
        """0 when `need` more tokens fit beside `held` (reserved by running requests), else the
        seconds to wait: until enough of the window has passed, or 1 when only reservations block."""
        w = self.window(name, budget)
        limit = fit_limit(budget.tokens, held, need)
        if w.total(now) < limit:
            return 0.0
        return w.retry_after(now, limit) or 1.0

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


def fit_limit(budget: int, held: int, need: int) -> int:
    """A request reserving `need` tokens fits while the window's total is below this.

    It fits when total + held + need <= budget, `held` being the reservations of the requests
    still running; a request that reserves nothing fits while the total is under the budget
    (as before reservations existed).  So whatever the concurrency, the tokens admitted never
    exceed the budget: what is spent exceeds it only by the overruns of requests that spend
    more than they reserved and were running when the last request was admitted (at most the
    key's max_concurrent of them).  The same arithmetic runs in Redis (engine/state/scripts.py).
    """
    return budget - held - max(need, 1) + 1


# Each dialect's output cap (routes.Route.output_cap), as decisions/clamps.py lowers it: Ollama's
# options.num_predict (a map: exact names), or top-level fields (struct fields: names in any case).
_TOP_CAPS = {routes.OPENAI: ("max_tokens", "max_completion_tokens"), routes.RESPONSES: ("max_output_tokens",),
             routes.ANTHROPIC: ("max_tokens",)}
_NAMES = {kind: tuple(n.encode() for n in names) for kind, names in
          {routes.OLLAMA: ("num_predict",), **_TOP_CAPS}.items()}
_NAMED = {kind: re.compile(b"|".join(names)) for kind, names in _NAMES.items()}
# The struct field Go matches in any case whose spelling decides how the body is read (OpenAI's two
# cap names share "max_": one count covers both).
_FOLDED = {routes.OLLAMA: b"options", routes.OPENAI: b"max_", routes.RESPONSES: b"max_output_tokens",
           routes.ANTHROPIC: b"max_tokens"}
# Routes that generate no output tokens: only their input is reserved.
NO_OUTPUT = frozenset({"embed", "embeddings", "v1_embeddings"})


def output_cap(route: routes.Route, body: bytes) -> int | None:
    """The output cap `body` sets for itself on `route`, at least what Ollama reads; None when it sets
    none (absent, null, negative: Ollama's "until done"), or might not.

    Go reads the top-level fields in any case (the last one winning) and merges repeated `options`
    maps, whose names are exact.  Here every value Go could end up with is looked at, and the
    largest is taken, or None (no cap) if any of them is not a cap: never less than Ollama's.  A
    body that names no cap at all is not parsed: the usual case costs a search for the name.
    """
    kind = route.output_cap
    if not kind or not body:
        return None
    escaped = b"\\u" in body
    ollama = kind == routes.OLLAMA
    lowered = body if ollama else body.lower()
    if not escaped and _NAMED[kind].search(lowered) is None:
        return None
    try:
        data = json.loads(body.decode("utf-8"))   # (UnicodeDecodeError is a ValueError)
    except (ValueError, RecursionError):
        return None
    if type(data) is not dict:
        return None
    # Names in one case only (the usual body) are looked up as they are; else as Go folds them.
    folded = _FOLDED[kind]
    get = _any_case if escaped or not body.isascii() or body.count(folded) != body.lower().count(folded) \
        else _exact
    if ollama:
        values = []
        for m in get(data, "options"):
            if type(m) is not dict:
                return None
            if "num_predict" in m:
                values.append(m["num_predict"])
    else:
        values = get(data, _TOP_CAPS[kind][0])
        if len(_TOP_CAPS[kind]) > 1:
            values = values + get(data, _TOP_CAPS[kind][1])
    if not values:
        return None
    for v in values:
        if not (type(v) is int or type(v) is float) or not 0 <= v < 1e18:
            return None
    return int(max(values))


def _exact(obj: dict[str, Any], name: str) -> list[Any]:
    return [obj[name]] if name in obj else []


def _any_case(obj: dict[str, Any], name: str) -> list[Any]:
    """The values of `obj`'s members Go reads as the struct field `name`."""
    return [v for k, v in obj.items() if fold(k) == name]


def reservation(route: routes.Route, body: bytes, body_bytes: int, key_cap: int | None, default: int) -> int:
    """The tokens a generation reserves at admission: its worst case.

    Its output cap (the body's own, else the key's, else `default`, [budgets] reserve; none for
    embeddings), plus its prompt estimated from the body's size (REQUEST_BYTES_PER_TOKEN).
    """
    cap = 0 if route.name in NO_OUTPUT else output_cap(route, body)
    if key_cap is not None and (cap is None or cap > key_cap):
        cap = key_cap   # (a larger cap in the body is clamped to the key's)
    if cap is None:
        cap = default
    return cap + -(-body_bytes // REQUEST_BYTES_PER_TOKEN)
