"""Token usage from the end of a response, and the `usage` report over the access log.

Pure logic: no asyncio.  The relay keeps references to the last few reads of
a generation's response (no copy, no parsing per token); when the response
ends, `usage_from_tail` looks once at its last few KiB for Ollama's final
`"done":true` line (prompt_eval_count, eval_count) or the OpenAI `usage`
object (prompt_tokens, completion_tokens).
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Iterable, TextIO

TAIL_BYTES = 8192

# Only Ollama's final line (and an embed answer) carries these counts, so the
# last occurrence in the tail is the one; Ollama's final /api/generate line
# puts a long "context" array between "done" and the counts, so they are
# searched for directly rather than from "done".  rfind keeps this in C.
_NUMBER = re.compile(rb"\s*:\s*(\d{1,18})")
_MODEL = re.compile(rb'\s*:\s*"([^"\\]{1,200})"')


def _after(tail: bytes, name: bytes, pat: re.Pattern[bytes], start: int = 0) -> re.Match[bytes] | None:
    i = tail.rfind(name, start)
    return pat.match(tail, i + len(name)) if i >= 0 else None


def join_tail(parts: Iterable[bytes | None], limit: int = TAIL_BYTES) -> bytes:
    """The last `limit` bytes of the given reads (oldest first), copying no more than that."""
    out: list[bytes] = []
    size = 0
    for p in reversed([p for p in parts if p]):
        out.append(p[-(limit - size):])
        size += len(out[-1])
        if size >= limit:
            break
    return b"".join(reversed(out))


def usage_from_tail(tail: bytes) -> dict[str, Any]:
    """{"model", "prompt_tokens", "completion_tokens"} found at the end of a response (may be empty)."""
    out: dict[str, Any] = {}
    u = tail.rfind(b'"usage"')
    if u >= 0:  # OpenAI-compatible: the usage object of the last chunk
        fields = ((b'"prompt_tokens"', "prompt_tokens"), (b'"completion_tokens"', "completion_tokens"))
    else:
        fields = ((b'"prompt_eval_count"', "prompt_tokens"), (b'"eval_count"', "completion_tokens"))
        u = 0
    for name, field in fields:
        m = _after(tail, name, _NUMBER, u)
        if m is not None:
            out[field] = int(m.group(1))
    m = _after(tail, b'"model"', _MODEL)
    if m is not None:
        out["model"] = m.group(1).decode("utf-8", "replace")
    return out


# --- the report ------------------------------------------------------------------------

def _parse_time(s: str) -> float | None:
    try:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def summarise(lines: Iterable[str], *, since: float | None, by: str, now: float | None = None,
              probe_threshold: int = 5) -> str:
    """The usage table over access-log lines (JSON), newer than `since` seconds ago."""
    now = time.time() if now is None else now
    field = {"key": "key", "model": "model", "ip": "client"}[by]
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # requests, prompt, completion, errors
    unauthorized: dict[str, int] = defaultdict(int)
    skipped = 0
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(e, dict):
            skipped += 1
            continue
        t = _parse_time(e.get("time", ""))
        if since is not None and (t is None or t < now - since):
            continue
        status = e.get("status") or 0
        if status == 401:
            unauthorized[str(e.get("client"))] += 1
        r = rows[str(e.get(field) if e.get(field) is not None else "-")]
        r[0] += 1
        r[1] += int(e.get("prompt_tokens") or 0)
        r[2] += int(e.get("completion_tokens") or 0)
        r[3] += 1 if isinstance(status, int) and status >= 400 else 0
    header = (by, "requests", "prompt_tokens", "completion_tokens", "errors")
    table = [header] + [(k, *map(str, v)) for k, v in sorted(rows.items(), key=lambda kv: -kv[1][0])]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
           for row in table]
    probes = sorted(((n, ip) for ip, n in unauthorized.items() if n >= probe_threshold), reverse=True)
    if probes:
        out.append("")
        out.append(f"probing addresses ({probe_threshold}+ unauthorized requests):")
        out.extend(f"  {ip}  {n}" for n, ip in probes)
    if skipped:
        out.append(f"({skipped} lines were not JSON and were skipped)")
    return "\n".join(out) + "\n"


def read_log(stream: TextIO) -> Iterable[str]:
    for line in stream:
        if line.strip():
            yield line
