"""`guardproxy usage`: requests, tokens, errors and probing addresses, over the access log; token budgets."""

from __future__ import annotations

import argparse
import gzip
import os
import re
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from ..config.load import load_config
from ..config.model import CommandError, ConfigError
from ..config.paths import env_api_key, existing_config
from ..config.values import parse_duration
from ..engine.accesslog import LogRecord
from .budgets import budget_report
from .redischeck import RedisDown
from ..wire.printable import printable
from .columns import table


def _parse_time(s: str) -> float | None:
    try:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


SCRAPE_PATH = "/metrics"  # answered by the gate itself, never forwarded (decisions/routes.py METRICS)

_GROUPS: dict[str, Callable[[LogRecord], str | None]] = {
    "key": lambda r: r.key, "model": lambda r: r.model, "ip": lambda r: r.client}


def summarise(lines: Iterable[str], *, since: float | None, by: str, now: float | None = None,
              probe_threshold: int = 5) -> str:
    """The usage table over access-log lines (JSON), newer than `since` seconds ago."""
    now = time.time() if now is None else now
    group = _GROUPS[by]
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # requests, prompt, completion, errors
    unauthorized: dict[str, int] = defaultdict(int)
    skipped = scrapes = 0
    for line in lines:
        rec = LogRecord.from_line(line)
        if rec is None:
            skipped += 1
            continue
        t = _parse_time(rec.time)
        if since is not None and (t is None or t < now - since):
            continue
        if rec.path == SCRAPE_PATH and rec.status != 401:
            scrapes += 1  # Prometheus or `top` reading the metrics: not a client's use of the models
            continue
        if rec.status == 401:
            unauthorized[rec.client] += 1
        r = rows[group(rec) or "-"]
        r[0] += 1
        r[1] += rec.prompt_tokens or 0
        r[2] += rec.completion_tokens or 0
        r[3] += 1 if rec.status >= 400 else 0
    header = (by, "requests", "prompt_tokens", "completion_tokens", "errors")
    out = table(header, [(k, *map(str, v)) for k, v in sorted(rows.items(), key=lambda kv: -kv[1][0])], 1)
    probes = sorted(((n, ip) for ip, n in unauthorized.items() if n >= probe_threshold), reverse=True)
    if probes:
        out.append("")
        out.append(f"probing addresses ({probe_threshold}+ unauthorized requests):")
        out.extend(f"  {printable(ip)}  {n}" for n, ip in probes)
    if scrapes:
        out.append(f"({scrapes} scrape{'s' if scrapes != 1 else ''} of /metrics not counted)")
    if skipped:
        out.append(f"({skipped} lines were not JSON and were skipped)")
    return "\n".join(out) + "\n"


def read_log(stream: TextIO) -> Iterable[str]:
    for line in stream:
        if line.strip():
            yield line


def rotated(log: str, *, since: float | None, now: float | None = None) -> list[Path]:
    """The rotated copies of `log` beside it, oldest first: logrotate's access.log.1, access.log.2.gz, ...
    and with `dateext` access.log-20261205(.gz).  A copy last written before the report's window is left out."""
    path = Path(log)
    pattern = re.compile(re.escape(path.name) + r"(?:\.(\d+)|-(\d{8,10}))(?:\.gz)?")
    now = time.time() if now is None else now
    found: list[tuple[int, str, Path]] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m is None:
            continue
        try:
            if since is not None and p.stat().st_mtime < now - since:
                continue
        except OSError:
            continue
        # Numbered copies: a higher number is older; dated ones: an earlier date is.
        found.append((-int(m.group(1)), "", p) if m.group(1) else (0, m.group(2), p))
    found.sort(key=lambda t: (t[1] == "", t[1], t[0]))
    return [p for _, _, p in found]


def read_logs(paths: Iterable[Path]) -> Iterator[str]:
    """The lines of each file in turn (.gz ones decompressed); CommandError naming a file that cannot be read."""
    for p in paths:
        try:
            if p.suffix == ".gz":
                with gzip.open(p, "rt", encoding="utf-8", errors="replace") as f:
                    yield from read_log(f)
            else:
                with open(p, encoding="utf-8", errors="replace") as f:
                    yield from read_log(f)
        except (OSError, EOFError) as e:
            raise CommandError(f"usage: {p}: cannot read: {getattr(e, 'strerror', None) or e}") from None


def add_parser(sub: Any) -> None:
    us = sub.add_parser("usage", help="summarise the access log: requests, tokens, errors, probing addresses")
    us.add_argument("--config", metavar="FILE", help="config whose log.access file to read")
    us.add_argument("--log", metavar="FILE", help="access log file to read (default: log.access of the config)")
    us.add_argument("--since", default="24h", help="only the last DURATION, e.g. 1h, 7d, or \"all\" (default 24h)")
    us.add_argument("--by", choices=("key", "model", "ip"), default="key", help="group rows by (default key)")
    us.set_defaults(func=cmd_usage)


def cmd_usage(args: argparse.Namespace) -> int:
    try:
        since = None if args.since == "all" else parse_duration(args.since)
    except ValueError as e:
        raise CommandError(f"usage: --since: expected {e}") from None
    environ = os.environ
    log = args.log
    config = None
    if not log or args.config:   # with only --log, a config elsewhere is none of this report's business
        path = existing_config(args.config, environ)
        if path is None:
            raise CommandError("usage: no config file found to read log.access from: pass --log FILE or --config FILE")
        config = load_config(path, env_key=env_api_key(environ))
        log = log or config.access_log
        if log in ("", "-"):
            raise ConfigError(f"{path}: log.access: expected a file path to read the access log from "
                              f"(or pass --log FILE)")
    older = rotated(log, since=since)   # a rotation must not cut the report short
    sys.stdout.write(summarise(read_logs(older + [Path(log)]), since=since, by=args.by))
    if older:
        sys.stdout.write(f"(with {len(older)} rotated file{'s' if len(older) != 1 else ''}: "
                         f"{', '.join(p.name for p in older)})\n")
    try:
        budgets = budget_report(config, environ) if config is not None else ""
    except RedisDown as e:  # the log's report is out; the budgets live in Redis
        print(f"guardproxy usage: token budgets not shown: {printable(str(e))}", file=sys.stderr)
        return 1
    if budgets:
        sys.stdout.write("\n" + budgets)
    return 0
