"""The route table and the handlers that are not generations."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from .checks import opt_bool, opt_count, opt_number, parse_json_body, require_model
from .exchange import BadRequest, Exchange, Handler
from .generation import ollama_generation, openai_generation
from . import newer
from .shapes import (PROMPT_TOKENS, BLOB_PATTERN, EMBED_DEFAULT_DIMS, EMBED_ITEM_BYTES, VERSION_BODY, dumps,
                     embedding_json, model_digest)


# -- simple endpoints --------------------------------------------------

async def root(ex: Exchange) -> None:
    await ex.send_full(200, b"Ollama is running", b"text/plain; charset=utf-8")


async def version(ex: Exchange) -> None:
    await ex.send_full(200, VERSION_BODY)


async def tags(ex: Exchange) -> None:
    await ex.send_full(200, ex.fake.tags_body)


async def ps(ex: Exchange) -> None:
    await ex.send_full(200, ex.fake.ps_body)


async def v1_models(ex: Exchange) -> None:
    await ex.send_full(200, ex.fake.v1_models_body)


async def v1_model(ex: Exchange) -> None:
    name = ex.path.rsplit("/", 1)[-1]
    await ex.send_json(200, {"id": name, "object": "model", "created": 1700000000, "owned_by": "library"})


async def embed(ex: Exchange) -> None:
    data = parse_json_body(ex.request.body)
    model = require_model(data)
    raw_input = data.get("input", "")
    if isinstance(raw_input, str):
        inputs = 1
    elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
        inputs = max(1, len(raw_input))
    else:
        raise BadRequest("invalid input type")
    fake_size = data.get("fake_size")
    if fake_size is None:
        dims = EMBED_DEFAULT_DIMS
    else:
        size = opt_count(fake_size, "fake_size", 0)
        dims = max(1, size // (EMBED_ITEM_BYTES * inputs))
    vector = embedding_json(dims)
    body = b"".join(
        [
            b'{"model":',
            dumps(model),
            b',"embeddings":[',
            b",".join([vector] * inputs),
            b'],"total_duration":1000,"load_duration":1,"prompt_eval_count":%d}'
            % (PROMPT_TOKENS * inputs),
        ]
    )
    await ex.send_full(200, body)


# -- pull --------------------------------------------------------------

async def pull(ex: Exchange) -> None:
    data = parse_json_body(ex.request.body)
    name = data.get("model") or data.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required")
    stream = opt_bool(data, "stream", True)
    delay = opt_number(data, "fake_delay", ex.fake.token_delay)
    if not stream:
        if delay > 0:
            await asyncio.sleep(delay * 4)
        await ex.send_json(200, {"status": "success"})
        return
    digest = "sha256:" + model_digest(name)
    total = 2_019_393_189
    lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
    for part in range(5):
        lines.append(
            {
                "status": f"pulling {digest[7:19]}",
                "digest": digest,
                "total": total,
                "completed": total * part // 4,
            }
        )
    lines += [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    ex.begin_stream(b"application/x-ndjson")
    for line in lines:
        if delay > 0:
            await asyncio.sleep(delay)
        await ex.stream_chunk(dumps(line) + b"\n")
    await ex.end_stream()


# -- bulk data ---------------------------------------------------------

async def blob(ex: Exchange) -> None:
    params = parse_qs(ex.query)

    def int_param(name: str, default: int, minimum: int) -> int:
        values = params.get(name)
        if not values:
            return default
        try:
            value = int(values[-1])
        except ValueError:
            raise BadRequest(f"{name} must be an integer") from None
        if value < minimum:
            raise BadRequest(f"{name} must be >= {minimum}")
        return value

    size = int_param("size", 1 << 20, 0)
    chunk = int_param("chunk", 65536, 1)
    framing = (params.get("framing") or ["chunked"])[-1]
    if framing not in ("chunked", "length"):
        raise BadRequest("framing must be 'chunked' or 'length'")
    pattern_len = len(BLOB_PATTERN)
    buf = BLOB_PATTERN * (chunk // pattern_len + 2)
    view = memoryview(buf)
    ex.begin_stream(
        b"application/octet-stream",
        content_length=size if framing == "length" else None,
    )
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        start = sent % pattern_len
        await ex.stream_chunk(bytes(view[start : start + n]))
        sent += n
    await ex.end_stream()


ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"GET": root, "HEAD": root},
    "/api/version": {"GET": version, "HEAD": version},
    "/api/tags": {"GET": tags, "HEAD": tags},
    "/api/ps": {"GET": ps, "HEAD": ps},
    "/v1/models": {"GET": v1_models, "HEAD": v1_models},
    "/api/generate": {"POST": partial(ollama_generation, chat=False)},
    "/api/chat": {"POST": partial(ollama_generation, chat=True)},
    "/api/embed": {"POST": embed},
    "/api/pull": {"POST": pull},
    "/v1/chat/completions": {"POST": partial(openai_generation, chat=True)},
    "/v1/completions": {"POST": partial(openai_generation, chat=False)},
    "/fake/blob": {"GET": blob},
    "/api/status": {"GET": newer.status},
    "/api/show": {"POST": newer.show},
    "/api/embeddings": {"POST": newer.embeddings},
    "/v1/embeddings": {"POST": newer.embeddings},
    "/v1/responses": {"POST": newer.responses},
    "/v1/messages": {"POST": newer.messages},
    "/v1/systemone": {"POST": newer.systemone},
    "/v1/audio/transcriptions": {"POST": newer.transcriptions},
    "/v1/images/generations": {"POST": newer.images},
    "/v1/images/edits": {"POST": newer.images},
    "/api/me": {"POST": newer.account},
    "/api/signout": {"POST": newer.account},
    "/api/experimental/web_search": {"POST": newer.account},
    "/api/experimental/web_fetch": {"POST": newer.account},
    "/api/create": {"POST": newer.admin},
    "/api/copy": {"POST": newer.admin},
    "/api/push": {"POST": newer.admin},
    "/api/delete": {"DELETE": newer.admin},
}

# Routes with a parameter as their last segment (gin's "/api/blobs/:digest").
PREFIX_ROUTES: dict[str, dict[str, Handler]] = {
    "/api/blobs/": {"POST": newer.blob_upload, "HEAD": newer.blob_upload},
    "/api/user/keys/": {"DELETE": newer.account},
    "/v1/models/": {"GET": v1_model},
}


_ANY_METHOD = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Routes for a whole subtree, any method (Ollama 0.34's "/api/codex/*path").
SUBTREE_ROUTES: dict[str, dict[str, Handler]] = {"/api/codex/": {m: newer.codex for m in _ANY_METHOD}}


def route(path: str) -> dict[str, Handler] | None:
    methods = ROUTES.get(path)
    for prefix, found in SUBTREE_ROUTES.items():
        if methods is None and (path.startswith(prefix) or path == prefix.rstrip("/")):
            return found
    if methods is None:
        for prefix, found in PREFIX_ROUTES.items():
            rest = path[len(prefix):]
            if path.startswith(prefix) and rest and "/" not in rest:
                return found
    return methods
