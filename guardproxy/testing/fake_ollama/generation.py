"""Generations: Ollama's NDJSON streams and the OpenAI-compatible SSE, or one JSON body."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .checks import opt_bool, opt_count, opt_number, parse_json_body, require_model
from .exchange import BadRequest, Exchange, ServerState
from .shapes import PROMPT_TOKENS, dumps, rfc3339_now

# Yield to the event loop every so often when generating without a delay;
# drain() does not suspend unless the transport is paused, and one huge
# stream must not starve every other connection during a benchmark.
_YIELD_EVERY = 16


async def pace(i: int, delay: float) -> None:
    """Before token `i`: the delay a request asked for, else a yield every few tokens."""
    if delay > 0:
        await asyncio.sleep(delay)
    elif i % _YIELD_EVERY == _YIELD_EVERY - 1:
        await asyncio.sleep(0)


def gen_params(
    state: ServerState, data: dict[str, Any], count: Any, count_name: str
) -> tuple[int, float]:
    n = opt_count(count, count_name, state.default_tokens)
    delay = opt_number(data, "fake_delay", state.token_delay)
    return n, delay


async def ollama_generation(ex: Exchange, *, chat: bool) -> None:
    data = parse_json_body(ex.request.body)
    model = require_model(data)
    if chat:
        messages = data.get("messages", [])
        if messages is not None and not isinstance(messages, list):
            raise BadRequest("messages must be an array")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    n, delay = gen_params(ex.fake, data, options.get("num_predict"), "num_predict")
    stream = opt_bool(data, "stream", True)
    started = time.perf_counter_ns()
    model_json = dumps(model)

    def final_fields(text: str) -> dict[str, Any]:
        elapsed = max(1, time.perf_counter_ns() - started)
        out: dict[str, Any] = {
            "model": model,
            "created_at": rfc3339_now().decode(),
        }
        if chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out.update(
            done=True,
            done_reason="stop",
            total_duration=elapsed,
            load_duration=1,
            prompt_eval_count=PROMPT_TOKENS,
            prompt_eval_duration=1,
            eval_count=n,
            eval_duration=elapsed,
        )
        return out

    if not stream:
        if delay > 0 and n > 0:
            await asyncio.sleep(delay * n)
        text = "".join(f" tok{i}" for i in range(n))
        await ex.send_json(200, final_fields(text))
        return

    head = b'{"model":' + model_json + b',"created_at":"'
    if chat:
        mid = b'","message":{"role":"assistant","content":" tok'
        tail = b'"},"done":false}\n'
    else:
        mid = b'","response":" tok'
        tail = b'","done":false}\n'
    ex.begin_stream(b"application/x-ndjson")
    for i in range(n):
        await pace(i, delay)
        await ex.stream_chunk(b"%b%b%b%d%b" % (head, rfc3339_now(), mid, i, tail))
    await ex.stream_chunk(dumps(final_fields("")) + b"\n")
    await ex.end_stream()


async def openai_generation(ex: Exchange, *, chat: bool) -> None:
    data = parse_json_body(ex.request.body)
    model = require_model(data)
    if chat and not isinstance(data.get("messages"), list):
        raise BadRequest("messages is required")
    count = data.get("max_completion_tokens")
    if count is None:
        count = data.get("max_tokens")
    n, delay = gen_params(ex.fake, data, count, "max_tokens")
    stream = opt_bool(data, "stream", False)
    stream_options = data.get("stream_options") or {}
    include_usage = isinstance(stream_options, dict) and bool(
        stream_options.get("include_usage")
    )
    seq = ex.fake.next_id()
    ident = f"chatcmpl-{seq}" if chat else f"cmpl-{seq}"
    created = int(time.time())
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": n,
        "total_tokens": PROMPT_TOKENS + n,
    }
    obj_kind = "chat.completion" if chat else "text_completion"

    if not stream:
        if delay > 0 and n > 0:
            await asyncio.sleep(delay * n)
        text = "".join(f" tok{i}" for i in range(n))
        choice: dict[str, Any] = (
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
            if chat
            else {"text": text, "index": 0, "finish_reason": "stop"}
        )
        await ex.send_json(
            200,
            {
                "id": ident,
                "object": obj_kind,
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [choice],
                "usage": usage,
            },
        )
        return

    chunk_kind = "chat.completion.chunk" if chat else "text_completion"
    envelope = {
        "id": ident,
        "object": chunk_kind,
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
    }
    # Everything up to the token number is constant for the stream.
    env_json = dumps(envelope)[:-1]
    if chat:
        head = b"data: " + env_json + (
            b',"choices":[{"index":0,"delta":{"role":"assistant","content":" tok'
        )
        tail = b'"},"finish_reason":null}]}\n\n'
        last_choice: dict[str, Any] = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": "stop",
        }
    else:
        head = b"data: " + env_json + b',"choices":[{"text":" tok'
        tail = b'","index":0,"finish_reason":null}]}\n\n'
        last_choice = {"text": "", "index": 0, "finish_reason": "stop"}

    ex.begin_stream(b"text/event-stream")
    for i in range(n):
        await pace(i, delay)
        await ex.stream_chunk(b"%b%d%b" % (head, i, tail))
    await ex.stream_chunk(
        b"data: " + dumps({**envelope, "choices": [last_choice]}) + b"\n\n"
    )
    if include_usage:
        await ex.stream_chunk(
            b"data: " + dumps({**envelope, "choices": [], "usage": usage}) + b"\n\n"
        )
    await ex.stream_chunk(b"data: [DONE]\n\n")
    await ex.end_stream()
