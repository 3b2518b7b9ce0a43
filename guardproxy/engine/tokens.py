"""Token counts from the end of a response (and, for one shape, its start).

Pure logic: no asyncio.  The relay keeps references to the last few reads
of a generation's response, which cover TAIL_BYTES (no parsing per token);
when the response ends, `usage_from_tail` looks once at them for the shapes
Ollama writes:

* its own API: the final `"done":true` line (prompt_eval_count, eval_count);
* OpenAI chat/completions/embeddings: a `usage` object (prompt_tokens, completion_tokens);
* OpenAI Responses: `usage` in response.completed (input_tokens, output_tokens);
* Anthropic Messages: input_tokens in message_start (the stream's first
  event: the relay keeps HEAD_BYTES of the start for it), and the cumulative
  output_tokens of the last message_delta.
"""

from __future__ import annotations

import re
from typing import Any

TAIL_BYTES = 256       # every shape's counts sit in the last 150 bytes or so of a body
LONG_TAIL_BYTES = 16384  # Responses: fields the client chose (metadata) may follow the usage
HEAD_BYTES = 2048      # Anthropic: message_start, the first event

# Only Ollama's final line (and an embed answer) carries these counts, so the
# last occurrence in the tail is the one; Ollama's final /api/generate line
# puts a long "context" array between "done" and the counts, so they are
# searched for directly rather than from "done".  rfind keeps this in C.
_NUMBER = re.compile(rb"\s*:\s*(\d{1,18})")
_MODEL = re.compile(rb'\s*:\s*"([^"\\]{1,200})"')


def _after(tail: bytes, name: bytes, pat: re.Pattern[bytes], start: int = 0) -> re.Match[bytes] | None:
    i = tail.rfind(name, start)
    return pat.match(tail, i + len(name)) if i >= 0 else None


def usage_from_tail(tail: bytes, head: bytes = b"") -> dict[str, Any]:
    """{"model", "prompt_tokens", "completion_tokens"} found at the end of a response (may be empty)."""
    out: dict[str, Any] = {}
    u = tail.rfind(b'"usage"')
    if u >= 0:  # the usage object of the last chunk (OpenAI, Responses, Anthropic)
        for field, names in (("prompt_tokens", (b'"prompt_tokens"', b'"input_tokens"')),
                             ("completion_tokens", (b'"completion_tokens"', b'"output_tokens"'))):
            for name in names:
                m = _after(tail, name, _NUMBER, u)
                if m is not None:
                    out[field] = int(m.group(1))
                    break
        if "prompt_tokens" not in out and head:
            m = _after(head, b'"input_tokens"', _NUMBER)  # Anthropic's message_start
            if m is not None:
                out["prompt_tokens"] = int(m.group(1))
    else:
        for name, field in ((b'"prompt_eval_count"', "prompt_tokens"), (b'"eval_count"', "completion_tokens")):
            m = _after(tail, name, _NUMBER)
            if m is not None:
                out[field] = int(m.group(1))
    m = _after(tail, b'"model"', _MODEL)
    if m is not None:
        out["model"] = m.group(1).decode("utf-8", "replace")
    return out
