"""Prometheus metrics: counted once per request when it ends, written out as text (format 0.0.4) when scraped.

The update at a request's end is on the request path, so it was measured
(benchmarks/metrics_cost.py: timeit of that update with realistic labels, a
generation's tokens included): prometheus_client costs 12-13 µs per request
through `labels()`, still 4.3-4.9 µs with its label children cached; the
plain dictionaries here cost 1.0-1.4 µs (4.5K instructions of a small
request, 9.6K of a generation, under callgrind).  The library is past the
2 µs the project allows, so the exposition is written here, and
prometheus_client's own parser reads it back in the tests and in `top`.

Every label takes few values, so no client can grow the number of series:
`key` a configured key's name ("-" for none), `route` a row of the route
table, `code` a three-digit status, `reason` one of REASONS, `model` a name
some upstream lists ("other" for anything else, see listed_models.py).
Gauges that the server already knows (open connections, the queue, the
upstream) are read when a scrape comes, not kept up to date per request.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable

from .. import __version__
from ..decisions.routes import Route
from ..wire.errors import GuardError
from ..wire.printable import printable
from .accesslog import LogRecord
from .listed_models import OTHER, listed_name

# Seconds; LLM answers range from a cached embedding to a long generation behind a cold model load.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
REASONS = ("unauthorized", "forbidden", "rate", "ban", "budget", "too_large", "bad_request", "busy")
_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "forbidden", 413: "too_large", 414: "too_large",
              431: "too_large", 429: "rate", 503: "busy"}
MAX_MODEL_LABELS = 4096  # remembered name -> label answers; a flood of made-up names only empties it
MAX_PENDING = 1024       # names kept as sent until the upstream's list is known; more are "other"
_PENDING = "\0"          # marks such a name in `tokens` (no label starts with it: canonical() never adds one)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
PAGE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: " + CONTENT_TYPE + b"\r\nCache-Control: no-store\r\n"  # lacks its framing

# One histogram per route: the count of each bucket (the last one +Inf), then the sum.
Histogram = list[float]


def refusal_reason(err: GuardError) -> str | None:
    """The `reason` label of a refusal; None for an upstream failure (502, 504) or an internal error."""
    if err.reason:
        return err.reason
    status = err.status
    reason = _BY_STATUS.get(status)
    if reason is None and (400 <= status < 500 or status in (501, 505)):
        reason = "bad_request"
    return reason


@dataclass(frozen=True)
class UpstreamState:
    name: str       # the `upstream` label: the host's name (its address when only `upstream` is set)
    up: bool
    in_flight: int  # generations it is answering now


@dataclass(frozen=True)
class Gauges:
    """What a scrape reads from the server as it is now."""
    connections_open: int
    queue_waiting: int
    upstreams: tuple[UpstreamState, ...]
    state_errors: int = 0      # [cluster]: Redis calls that failed or timed out
    state_fallbacks: int = 0   # [cluster]: requests decided by on_redis_error instead of Redis
    access_log_errors: int = 0  # access-log writes that failed (their lines are lost)


class Metrics:
    """The counters of one running gate (one event loop: no locks)."""

    def __init__(self, known_models: Callable[[], frozenset[str] | None]) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.refusals = dict.fromkeys(REASONS, 0)  # every reason from the start, so rate() has a base
        self.tokens: dict[tuple[str, str], list[int]] = {}  # (key, model) -> [prompt, completion]
        self.durations: dict[str, Histogram] = {}
        self.ttfb: dict[str, Histogram] = {}
        self.streams: dict[str, int] = {}  # key -> responses being relayed now (the exchange counts them)
        self._known_models = known_models  # None until the upstream's list has been read once
        self._known: frozenset[str] | None = None
        self._labels: dict[str, str] = {}  # a model name as requests say it -> its label
        self._pending = False  # some names in `tokens` wait for the upstream's list

    # --- the request path ---------------------------------------------------------------

    def ended(self, record: LogRecord, route: Route, duration: float, ttfb: float) -> None:
        """A request is over.  `ttfb` is 0 when guardproxy answered it itself (no upstream byte to wait for)."""
        key = record.key or "-"
        name = route.name
        requests = self.requests
        k = (key, name, record.status)
        requests[k] = requests.get(k, 0) + 1
        h = self.durations.get(name)
        if h is None:
            h = self.durations[name] = [0.0] * (len(BUCKETS) + 2)
        h[bisect_left(BUCKETS, duration)] += 1
        h[-1] += duration
        if ttfb > 0.0:
            h = self.ttfb.get(name)
            if h is None:
                h = self.ttfb[name] = [0.0] * (len(BUCKETS) + 2)
            h[bisect_left(BUCKETS, ttfb)] += 1
            h[-1] += ttfb
        prompt, completion = record.prompt_tokens, record.completion_tokens
        if prompt is not None or completion is not None:
            t = (key, self.model_label(record.model))
            counts = self.tokens.get(t)
            if counts is None:
                counts = self.tokens[t] = [0, 0]
            counts[0] += prompt or 0
            counts[1] += completion or 0

    def refused(self, err: GuardError) -> None:
        reason = refusal_reason(err)
        if reason is not None:
            self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def model_label(self, name: str | None) -> str:
        """`name`'s label, or, before the upstream's list is known, the name marked as pending."""
        known = self._known_models()
        if known is not self._known:  # a new list: earlier answers may have changed
            self._known, self._labels = known, {}
        if name is None:
            return OTHER
        label = self._labels.get(name)
        if label is None:
            if known is None:  # kept as sent, up to a bound, until the list is known
                if len(self._labels) >= MAX_PENDING:
                    return OTHER
                self._pending = True
                label = _PENDING + name
            else:
                if len(self._labels) >= MAX_MODEL_LABELS:
                    self._labels.clear()
                label = listed_name(name, known)
            self._labels[name] = label
        return label

    # --- a scrape -----------------------------------------------------------------------

    def _settle(self) -> None:
        """Give the names counted before the upstream's list was known their labels."""
        known = self._known_models()
        if known is None or not self._pending:
            return
        for (key, label) in [t for t in self.tokens if t[1].startswith(_PENDING)]:
            prompt, completion = self.tokens.pop((key, label))
            counts = self.tokens.setdefault((key, listed_name(label[1:], known)), [0, 0])
            counts[0] += prompt
            counts[1] += completion
        self._pending = False

    def exposition(self, gauges: Gauges) -> bytes:
        self._settle()
        out: list[str] = []
        w = out.append
        _family(w, "guardproxy_build_info", "gauge", "guardproxy's version (always 1).")
        w(f'guardproxy_build_info{{version="{_escape(__version__)}"}} 1\n')
        _family(w, "guardproxy_requests_total", "counter", "Requests, counted when each ended, by key, route and status.")
        for (key, route, code), n in sorted(self.requests.items()):
            w(f'guardproxy_requests_total{{key="{_escape(key)}",route="{route}",code="{code}"}} {n}\n')
        _family(w, "guardproxy_refusals_total", "counter", "Requests guardproxy refused, by reason.")
        for reason, n in self.refusals.items():
            w(f'guardproxy_refusals_total{{reason="{reason}"}} {n}\n')
        _family(w, "guardproxy_tokens_total", "counter",
                "Tokens of the generations that ended, by key and model (\"other\": a model no upstream lists).")
        for (key, model), (prompt, completion) in sorted(self.tokens.items()):
            if model.startswith(_PENDING):
                continue  # shown once it has its label: a counter must not move from one series to another
            labels = f'key="{_escape(key)}",model="{_escape(model)}"'
            w(f'guardproxy_tokens_total{{{labels},kind="prompt"}} {prompt}\n')
            w(f'guardproxy_tokens_total{{{labels},kind="completion"}} {completion}\n')
        _histogram(w, "guardproxy_request_duration_seconds", "Seconds from a request's head to its end, by route.",
                   self.durations)
        _histogram(w, "guardproxy_time_to_first_byte_seconds",
                   "Seconds from a request's head to the upstream's response head, by route.", self.ttfb)
        _family(w, "guardproxy_streams_active", "gauge", "Responses being relayed from the upstream now, by key.")
        for key, n in sorted(self.streams.items()):
            w(f'guardproxy_streams_active{{key="{_escape(key)}"}} {n}\n')
        _family(w, "guardproxy_queue_waiting", "gauge", "Generations waiting for a slot or a host.")
        w(f"guardproxy_queue_waiting {gauges.queue_waiting}\n")
        _family(w, "guardproxy_connections_open", "gauge", "Client connections open.")
        w(f"guardproxy_connections_open {gauges.connections_open}\n")
        _family(w, "guardproxy_upstream_up", "gauge", "1 if the host is up (by its health checks; with them off, by its last model-list answer).")
        for u in gauges.upstreams:
            w(f'guardproxy_upstream_up{{upstream="{_escape(u.name)}"}} {int(u.up)}\n')
        _family(w, "guardproxy_upstream_in_flight", "gauge", "Generations the host is answering now.")
        for u in gauges.upstreams:
            w(f'guardproxy_upstream_in_flight{{upstream="{_escape(u.name)}"}} {u.in_flight}\n')
        _family(w, "guardproxy_shared_state_errors_total", "counter",
                "Calls to the shared state ([cluster] Redis) that failed or timed out.")
        w(f"guardproxy_shared_state_errors_total {gauges.state_errors}\n")
        _family(w, "guardproxy_shared_state_fallbacks_total", "counter",
                "Requests decided by [cluster] on_redis_error because Redis could not be asked.")
        w(f"guardproxy_shared_state_fallbacks_total {gauges.state_fallbacks}\n")
        _family(w, "guardproxy_access_log_write_errors_total", "counter",
                "Access-log writes that failed (a full disk, say); their lines are lost.")
        w(f"guardproxy_access_log_write_errors_total {gauges.access_log_errors}\n")
        return "".join(out).encode("utf-8")


def _family(w: Callable[[str], object], name: str, kind: str, text: str) -> None:
    w(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")


_LE = [repr(b) for b in BUCKETS] + ["+Inf"]


def _histogram(w: Callable[[str], object], name: str, text: str, by_route: dict[str, Histogram]) -> None:
    _family(w, name, "histogram", text)
    for route, h in sorted(by_route.items()):
        total = 0
        for le, n in zip(_LE, h):
            total += int(n)
            w(f'{name}_bucket{{route="{route}",le="{le}"}} {total}\n')
        w(f'{name}_sum{{route="{route}"}} {h[-1]!r}\n{name}_count{{route="{route}"}} {total}\n')


def _escape(value: str) -> str:
    """A label value as the text format writes it.  Key names and model names may hold anything: control
    characters are first written as visible escapes (wire/printable.py), so that no scraper, dashboard or
    `top` ever prints an ESC or a BEL it read here; then the format's own escaping of \\ and \"."""
    value = printable(value)
    if "\\" in value or '"' in value:
        return value.replace("\\", "\\\\").replace('"', '\\"')
    return value
