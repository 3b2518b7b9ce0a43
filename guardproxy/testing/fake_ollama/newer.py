"""The newer generation APIs with their wire shapes: OpenAI Responses, Anthropic Messages,
audio transcriptions and (Ollama 0.14 to 0.32.5) images; plus the small routes of Ollama's
own API that a gate must know: show, embeddings, status, the account and web routes, blobs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .checks import opt_bool, opt_count, parse_json_body, require_model
from .exchange import BadRequest, Exchange
from .generation import gen_params, pace
from .shapes import PROMPT_TOKENS, dumps, model_digest, rfc3339_now


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


# -- server-side web search (Ollama 0.33 middleware/anthropic.go, openai.go) ----------

# With the tool declared, the fake "searches" once and runs one follow-up chat round:
# two rounds in all, whose usage is summed into the one response, as Ollama does.
WEB_SEARCH_ROUNDS = 2


def _web_search_rounds(data: dict[str, Any], exact: bool) -> int:
    """1, or WEB_SEARCH_ROUNDS when the body declares Ollama's web-search tool (the middleware's rule)."""
    for tool in data.get("tools") or []:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and (kind == "web_search" if exact else kind.startswith("web_search")):
            return WEB_SEARCH_ROUNDS
    return 1


# -- OpenAI Responses (/v1/responses) ------------------------------------------

async def responses(ex: Exchange) -> None:
    data = parse_json_body(ex.request.body)
    model = require_model(data)
    n, delay = gen_params(ex.fake, data, data.get("max_output_tokens"), "max_output_tokens")
    ident = f"resp_{ex.fake.next_id()}"
    created = int(time.time())
    rounds = _web_search_rounds(data, exact=True)
    usage = {"input_tokens": PROMPT_TOKENS * rounds, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": n * rounds, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": (PROMPT_TOKENS + n) * rounds}
    text = "".join(f" tok{i}" for i in range(n))

    def response(status: str, out_text: str, with_usage: bool) -> dict[str, Any]:
        return {"id": ident, "object": "response", "created_at": created, "status": status, "model": model,
                "output": [{"id": "msg_1", "type": "message", "status": status, "role": "assistant",
                            "content": [{"type": "output_text", "text": out_text, "annotations": []}]}]
                if out_text else [],
                "usage": usage if with_usage else None,
                # Fields the client chose follow the usage, as in Ollama's struct.
                "store": False, "metadata": data.get("metadata") or {}}

    if not opt_bool(data, "stream", False):
        await ex.send_json(200, response("completed", text, True))
        return
    ex.begin_stream(b"text/event-stream")
    seq = 0
    await ex.stream_chunk(_sse("response.created", {"type": "response.created", "sequence_number": seq,
                                                    "response": response("in_progress", "", False)}))
    for i in range(n):
        await pace(i, delay)
        seq += 1
        await ex.stream_chunk(_sse("response.output_text.delta", {
            "type": "response.output_text.delta", "sequence_number": seq, "item_id": "msg_1", "output_index": 0,
            "content_index": 0, "delta": f" tok{i}"}))
    seq += 1
    await ex.stream_chunk(_sse("response.completed", {"type": "response.completed", "sequence_number": seq,
                                                      "response": response("completed", text, True)}))
    await ex.end_stream()


# -- Anthropic Messages (/v1/messages) -------------------------------------------

async def messages(ex: Exchange) -> None:
    data = parse_json_body(ex.request.body)
    model = require_model(data)
    n, delay = gen_params(ex.fake, data, data.get("max_tokens"), "max_tokens")
    ident = f"msg_{ex.fake.next_id()}"
    text = "".join(f" tok{i}" for i in range(n))
    rounds = _web_search_rounds(data, exact=False)
    # Summed over the rounds; with web search the last message_delta carries input_tokens too.
    summed = {"input_tokens": PROMPT_TOKENS * rounds, "output_tokens": n * rounds}
    if not opt_bool(data, "stream", False):
        await ex.send_json(200, {"id": ident, "type": "message", "role": "assistant", "model": model,
                                 "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                 "stop_sequence": None, "usage": summed})
        return
    ex.begin_stream(b"text/event-stream")
    await ex.stream_chunk(_sse("message_start", {"type": "message_start", "message": {
        "id": ident, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 0}}}))
    await ex.stream_chunk(_sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                       "content_block": {"type": "text", "text": ""}}))
    for i in range(n):
        await pace(i, delay)
        await ex.stream_chunk(_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                           "delta": {"type": "text_delta", "text": f" tok{i}"}}))
    await ex.stream_chunk(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    await ex.stream_chunk(_sse("message_delta", {"type": "message_delta",
                                                 "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                                 "usage": summed if rounds > 1 else {"output_tokens": n}}))
    await ex.stream_chunk(_sse("message_stop", {"type": "message_stop"}))
    await ex.end_stream()


# -- Ollama 0.35 /v1/systemone and 0.34 /api/codex/* ---------------------------------

async def systemone(ex: Exchange) -> None:
    """A non-streaming generation; its usage in input_tokens / output_tokens, last in the body."""
    data = parse_json_body(ex.request.body)
    model = require_model(data)
    n, delay = gen_params(ex.fake, data, data.get("max_tokens"), "max_tokens")
    if delay > 0 and n > 0:
        await asyncio.sleep(delay * n)
    await ex.send_json(200, {"id": f"sys_{ex.fake.next_id()}", "object": "systemone.response", "model": model,
                             "created_at": int(time.time()), "done": True,
                             "output": "".join(f" tok{i}" for i in range(n)),
                             "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": n,
                                       "total_tokens": PROMPT_TOKENS + n}})


async def codex(ex: Exchange) -> None:
    """Anything under /api/codex/: Ollama answers from its local catalog or forwards it to OpenAI."""
    await ex.send_json(200, {"object": "codex", "path": ex.path, "method": ex.method,
                             "forwarded_authorization": ex.request.header("authorization") is not None})


# -- audio and images -------------------------------------------------------------

def _form_fields(content_type: str | None, body: bytes) -> dict[str, bytes]:
    """The value fields of a multipart form (the first of each name), file parts left out."""
    boundary = ""
    for param in (content_type or "").split(";")[1:]:
        k, _, v = param.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip('"')
    if not (content_type or "").lower().startswith("multipart/form-data") or not boundary:
        raise BadRequest("failed to parse multipart form: request Content-Type isn't multipart/form-data")
    fields: dict[str, bytes] = {}
    for piece in (b"\r\n" + body).split(b"\r\n--" + boundary.encode())[1:-1]:
        head, _, content = piece.partition(b"\r\n\r\n")
        disposition = next((ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-disposition")), b"")
        if b"filename=" in disposition:
            fields.setdefault("__file__", content)
            continue
        name = disposition.partition(b'name="')[2].partition(b'"')[0].decode()
        fields.setdefault(name, content)
    return fields


async def transcriptions(ex: Exchange) -> None:
    fields = _form_fields(ex.request.header("content-type"), ex.request.body)
    if not fields.get("model"):
        raise BadRequest("model is required")
    if "__file__" not in fields:
        raise BadRequest("file is required: http: no such file")
    await ex.send_json(200, {"text": f"{len(fields['__file__'])} bytes of audio heard by {fields['model'].decode()}"})


async def images(ex: Exchange) -> None:
    data = parse_json_body(ex.request.body)
    require_model(data)
    n = opt_count(data.get("n"), "n", 1)
    await ex.send_json(200, {"created": int(time.time()), "data": [{"b64_json": "iVBORw0KGgo="}] * n})


# -- the rest of Ollama's own API ---------------------------------------------------

async def show(ex: Exchange) -> None:
    data = parse_json_body(ex.request.body)
    name = data.get("model") or data.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required")
    await ex.send_json(200, {"modelfile": f"FROM {name}\n", "parameters": "", "template": "{{ .Prompt }}",
                             "details": {"format": "gguf"}, "model_info": {}, "capabilities": ["completion"],
                             "modified_at": rfc3339_now().decode()})


async def embeddings(ex: Exchange) -> None:
    """The older /api/embeddings: one vector, no counts; and /v1/embeddings with usage."""
    data = parse_json_body(ex.request.body)
    model = require_model(data)
    if ex.path == "/v1/embeddings":
        await ex.send_json(200, {"object": "list", "model": model,
                                 "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                                 "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}})
    else:
        await ex.send_json(200, {"embedding": [0.1, 0.2, 0.3]})


async def status(ex: Exchange) -> None:
    await ex.send_json(200, {"cloud": {"disabled": ex.fake.cloud_disabled, "source": "config"}})


async def account(ex: Exchange) -> None:
    """/api/me, /api/signout, /api/user/keys/*, web_search/web_fetch: the owner's ollama.com account."""
    if ex.path == "/api/me":
        await ex.send_json(200, {"name": "owner", "email": "owner@example.com", "plan": "pro"})
    elif ex.path.startswith("/api/experimental/"):
        await ex.send_json(200, {"results": []})
    else:
        await ex.send_full(200, b"")


async def admin(ex: Exchange) -> None:
    """/api/create, /api/copy, /api/delete, /api/push: accepted and answered as Ollama does."""
    data = parse_json_body(ex.request.body) if ex.request.body else {}
    if ex.path == "/api/create" and opt_bool(data, "stream", True):
        ex.begin_stream(b"application/x-ndjson")
        for line in ({"status": "parsing GGUF"}, {"status": "writing manifest"}, {"status": "success"}):
            await ex.stream_chunk(dumps(line) + b"\n")
        await ex.end_stream()
    else:
        await ex.send_json(200, {"status": "success"})


async def blob_upload(ex: Exchange) -> None:
    """POST (201) and HEAD (200: we have it) /api/blobs/sha256:<hex>."""
    digest = ex.path.rsplit("/", 1)[-1]
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise BadRequest("invalid digest format")
    if ex.method == "HEAD":
        await ex.send_full(200 if digest[7:] == model_digest("known") else 404, b"")
    else:
        await ex.send_full(201, b"")
