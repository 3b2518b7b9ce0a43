"""Token counts from the end of a response.

Pure logic: no asyncio.  The relay keeps references to the last few reads of
a generation's response (no copy, no parsing per token); when the response
ends, `usage_from_tail` looks once at its last few KiB for Ollama's final
`"done":true` line (prompt_eval_count, eval_count) or the OpenAI `usage`
object (prompt_tokens, completion_tokens).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

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
