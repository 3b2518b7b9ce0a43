"""What `guardproxy top` shows, as pure functions: a scrape of /metrics in, a screen of text out.

A Snapshot is one scrape, parsed by prometheus_client's own text parser and
stamped with the (monotonic) time the scrape began.  Rates come from two
consecutive snapshots, the way Prometheus' rate() does over a window of two
samples.  `render` fits every line into the width it is given, however
narrow, so a resized terminal never wraps or breaks the screen; it is plain
ASCII so any console encoding can print it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

from .columns import fit, table

Labels = tuple[tuple[str, str], ...]
Series = Mapping[Labels, float]


class NotMetrics(ValueError):
    """The body is not Prometheus text, or has no guardproxy series in it."""


@dataclass(frozen=True)
class Snapshot:
    at: float                                   # monotonic seconds when the scrape began
    samples: Mapping[str, Series] = field(default_factory=dict)  # sample name -> labels -> value
    source: str = ""                            # the URL scraped, for the title line

    def series(self, name: str) -> Series:
        return self.samples.get(name, {})

    def total(self, name: str) -> float | None:
        s = self.samples.get(name)
        return None if s is None else sum(s.values())


def parse_metrics(text: str, at: float, source: str = "") -> Snapshot:
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[s.name][tuple(sorted(s.labels.items()))] = float(s.value)
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise NotMetrics(f"not Prometheus text ({e})") from None
    if not any(name.startswith("guardproxy_") for name in samples):
        raise NotMetrics("no guardproxy_ series in it (is this guardproxy's /metrics?)")
    return Snapshot(at, dict(samples), source)


def _label(labels: Labels, name: str) -> str:
    return next((v for k, v in labels if k == name), "-")


def group(series: Series, by: Sequence[str]) -> dict[tuple[str, ...], float]:
    """Sum the series over every label not in `by` (a missing label counts as "-")."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in series.items():
        out[tuple(_label(labels, b) for b in by)] += value
    return dict(out)


def increase(prev: Series, now: Series) -> dict[Labels, float]:
    """How much each counter grew; a counter lower than before was reset, and grew by its new value."""
    out: dict[Labels, float] = {}
    for labels, value in now.items():
        before = prev.get(labels, 0.0)
        out[labels] = value - before if value >= before else value
    return out


SCRAPE = ("route", "metrics")  # GET /metrics: a scrape (Prometheus's, or top's own), not a client's request


def clients(series: Series) -> Series:
    """guardproxy_requests_total without the scrapes of /metrics, which are not traffic."""
    return {labels: v for labels, v in series.items() if SCRAPE not in labels}


def rates(prev: Snapshot | None, now: Snapshot, name: str, by: Sequence[str],
          only: Callable[[Series], Series] = lambda s: s) -> dict[tuple[str, ...], float] | None:
    """Per-second increase of a counter (its series that `only` keeps), summed by the labels in `by`;
    None before there are two scrapes."""
    if prev is None or now.at <= prev.at:
        return None
    dt = now.at - prev.at
    return {k: v / dt for k, v in group(increase(only(prev.series(name)), only(now.series(name))), by).items()}


def interval_quantile(prev: Snapshot | None, now: Snapshot, histogram: str, q: float) -> float | None:
    """The q-quantile of the observations made between two scrapes, over all routes, interpolated
    within a bucket as histogram_quantile() does; None when nothing was observed."""
    if prev is None:
        return None
    name = histogram + "_bucket"
    buckets = sorted((float(le), n) for (le,), n in group(increase(prev.series(name), now.series(name)), ["le"]).items()
                     if le != "-")
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


# -- formatting -------------------------------------------------------------------------------------

def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x >= 100 or x == 0:
        return f"{x:.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_seconds(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 1:
        return f"{x * 1000:.0f}ms"
    return f"{x:.2f}s" if x < 60 else f"{x / 60:.1f}m"


def _section(title: str, headers: Sequence[str], rows: list[list[str]], text_columns: int, width: int,
             limit: int | None) -> list[str]:
    """A titled table of at most `limit` lines of rows, the last saying how many were left out."""
    more = ""
    if limit is not None and len(rows) > limit:
        keep = max(limit - 1, 1)
        rows, more = rows[:keep], f"(+{len(rows) - keep} more)"
    return [title, *table(headers, rows, text_columns, width), *([more] if more else [])]


def _pack(items: Sequence[str], width: int) -> list[str]:
    """Short "name value" items on as few lines as fit."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += "  " + item
        else:
            lines.append(item)
    return lines


# -- the screen -------------------------------------------------------------------------------------

def _streams(now: Snapshot, limit: int | None, width: int) -> list[str]:
    series = now.series("guardproxy_streams_active")
    by_model = any(k == "model" for labels in series for k, _ in labels)
    by = ["key", "model"] if by_model else ["key"]
    rows = [[*k, f"{v:.0f}"] for k, v in sorted(group(series, by).items(), key=lambda kv: (-kv[1], kv[0])) if v > 0]
    if not rows:
        return ["active streams: none"]
    return _section("ACTIVE STREAMS", [b.upper() for b in by] + ["STREAMS"], rows, len(by), width, limit)


def _tokens(prev: Snapshot | None, now: Snapshot, limit: int | None, width: int) -> list[str]:
    r = rates(prev, now, "guardproxy_tokens_total", ["key", "model", "kind"])
    if r is None:
        return ["tokens/s: after the next scrape"]
    per: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (key, model, kind), v in r.items():
        if kind in ("prompt", "completion"):
            per[key, model][kind == "completion"] += v
    rows = [[key, model, fmt_rate(p), fmt_rate(c)]
            for (key, model), (p, c) in sorted(per.items(), key=lambda kv: (-sum(kv[1]), kv[0])) if p + c > 0]
    if not rows:
        return ["tokens/s: none"]
    return _section("TOKENS/S", ["KEY", "MODEL", "PROMPT", "COMPLETION"], rows, 2, width, limit)


def _counter_table(prev: Snapshot | None, now: Snapshot, name: str, label: str, title: str,
                   limit: int | None, width: int, only: Callable[[Series], Series] = lambda s: s) -> list[str]:
    totals = group(only(now.series(name)), [label])
    r = rates(prev, now, name, [label], only)
    rows = [[k, fmt_rate(None if r is None else r.get((k,), 0.0)), f"{v:.0f}"]
            for (k,), v in sorted(totals.items()) if v > 0]
    if not rows:
        return []
    return _section(title, [label.upper(), "PER SEC", "TOTAL"], rows, 1, width, limit)


def _upstreams(now: Snapshot, limit: int | None, width: int) -> list[str]:
    up = group(now.series("guardproxy_upstream_up"), ["upstream"])
    busy = group(now.series("guardproxy_upstream_in_flight"), ["upstream"])
    names = sorted(set(up) | set(busy))
    if not names:
        return []
    rows = [[n[0].split("://", 1)[-1], "-" if n not in up else ("up" if up[n] >= 1 else "DOWN"),
             "-" if n not in busy else f"{busy[n]:.0f}"] for n in names]
    return _section("UPSTREAMS", ["UPSTREAM", "STATE", "IN FLIGHT"], rows, 1, width, limit)


def render(prev: Snapshot | None, now: Snapshot, width: int, *, height: int | None = None) -> str:
    """The screen for the latest scrape (rates against the one before), every line at most `width`
    characters.  With a `height`, tables are cut to the most rows that let the screen fit in it."""
    width = max(width, 1)
    text = _screen(prev, now, width, None)
    for rows in (8, 5, 3, 2):
        if height is None or text.count("\n") <= height:
            break
        text = _screen(prev, now, width, rows)
    return text


def _screen(prev: Snapshot | None, now: Snapshot, width: int, rows: int | None) -> str:
    version = next((_label(labels, "version") for labels in now.series("guardproxy_build_info")), "")
    head = " ".join(p for p in ("guardproxy", version, now.source) if p)

    def gauge(name: str) -> str:
        v = now.total(name)
        return "-" if v is None else f"{v:.0f}"

    req = rates(prev, now, "guardproxy_requests_total", [], clients)
    tok = rates(prev, now, "guardproxy_tokens_total", [])
    summary = [f"connections {gauge('guardproxy_connections_open')}", f"streams {gauge('guardproxy_streams_active')}",
               f"queue {gauge('guardproxy_queue_waiting')}",
               f"requests/s {fmt_rate(None if req is None else sum(req.values()))}",
               f"tokens/s {fmt_rate(None if tok is None else sum(tok.values()))}"]
    latency = []
    for title, hist in (("ttfb", "guardproxy_time_to_first_byte_seconds"), ("duration", "guardproxy_request_duration_seconds")):
        p50, p99 = (interval_quantile(prev, now, hist, q) for q in (0.5, 0.99))
        if p50 is not None and p99 is not None:
            latency.append(f"{title} p50 {fmt_seconds(p50)} p99 {fmt_seconds(p99)}")
    if prev is not None:
        latency.append(f"(last {now.at - prev.at:.1f}s)" if latency else "no request ended since the last scrape")
    sections = [
        [head, *_pack(summary, width), *_pack(latency, width)],
        _streams(now, rows, width),
        _tokens(prev, now, rows, width),
        _counter_table(prev, now, "guardproxy_requests_total", "code", "REQUESTS", rows, width, clients),
        _upstreams(now, rows, width),
        _counter_table(prev, now, "guardproxy_refusals_total", "reason", "REFUSALS", rows, width),
    ]
    lines = [line for i, section in enumerate(s for s in sections if s) for line in ([""] if i else []) + section]
    return "\n".join(fit(line, width) for line in lines) + "\n"
