"""Small value parsers shared by the loader and the command line: durations, sizes, rates, addresses."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

from .model import Budget, Rate, Upstream

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from 30, 2.5, "30s", "10min", "1h", "250ms"."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration that is not negative")
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
    # TOML's nan and inf are floats too: a nan timeout fires at once and an infinite one overflows.
    if seconds is None or not math.isfinite(seconds):
        raise ValueError("a duration like \"30s\", \"10min\" or a number of seconds")
    return seconds


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
               "GB": 1000**3, "GiB": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes from 1048576, "64MiB", "512KiB", "1GB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError("a size like \"64MiB\", \"512KiB\" or a number of bytes")


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
               "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}


def parse_rate(value: Any) -> Rate:
    """"30/min", "5/s", "1000/h" (also "10/5min") -> Rate."""
    m = _RATE.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1)) < 1:
        raise ValueError("a rate like \"30/min\", \"5/s\" or \"1000/h\"")
    return Rate(int(m.group(1)), int(m.group(2) or 1) * _RATE_UNITS[m.group(3)])


_BUDGET = re.compile(r"^\s*(\d[\d_]*)\s*/\s*(h|hour|d|day|month)\s*$")
# Canonical unit -> seconds; a month is 30 days (the window slides, so calendar months do not apply).
BUDGET_WINDOWS = {"h": 3600.0, "day": 86400.0, "month": 30 * 86400.0}
_BUDGET_UNITS = {"h": "h", "hour": "h", "d": "day", "day": "day", "month": "month"}


def parse_budget(value: Any) -> Budget:
    """"200000/day", "5000/h", "3_000_000/month" -> Budget (prompt plus completion tokens)."""
    m = _BUDGET.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1).replace("_", "")) < 1:
        raise ValueError("a token budget like \"200000/day\", \"20000/h\" or \"3000000/month\"")
    unit = _BUDGET_UNITS[m.group(2)]
    return Budget(int(m.group(1).replace("_", "")), BUDGET_WINDOWS[unit], unit)


def parse_hostport(value: str) -> tuple[str, int]:
    """"HOST:PORT" or "[v6]:PORT" -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value.strip())
    if not m:
        raise ValueError("HOST:PORT, e.g. \"0.0.0.0:11435\" or \"[::]:11435\"")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError("a port between 0 and 65535")
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("a valid IPv6 address inside [ ]") from None
    return host, port


def is_loopback_host(host: str) -> bool:
    """A host name or address only this machine can reach (an unresolved name is not)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_upstream(value: str) -> Upstream:
    m = re.fullmatch(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(?::(\d+))?/?", value.strip())
    if not m:
        raise ValueError("an http:// URL with host and optional port, e.g. \"http://127.0.0.1:11434\"")
    host = m.group(1).strip("[]")
    port = int(m.group(2)) if m.group(2) else 80
    if not 0 < port <= 65535:
        raise ValueError("a port between 1 and 65535")
    return Upstream(host, port)
