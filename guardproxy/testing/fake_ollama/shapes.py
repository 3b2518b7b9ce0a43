"""What a fake Ollama says: its models, fixed JSON bodies, timestamps, embedding vectors."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from typing import Any


VERSION = "0.12.0"
PROMPT_TOKENS = 26


MODELS: list[tuple[str, str, int, str, str]] = [
    # name, family, size, parameter_size, quantization
    ("llama3.2:latest", "llama", 2019393189, "3.2B", "Q4_K_M"),
    ("qwen3:8b", "qwen3", 5225388164, "8.2B", "Q4_K_M"),
    ("mistral:7b", "llama", 4113301824, "7.2B", "Q4_0"),
]


BLOB_PATTERN = b"0123456789abcdef"
_EMBED_VALUES = [f"{(i * 0.0617) % 1:.7f}".encode() for i in range(1, 17)]
EMBED_DEFAULT_DIMS = 16
# Each value is exactly 9 characters plus a comma, so a target byte size maps
# directly onto a number of dimensions.
EMBED_ITEM_BYTES = 10


# Cached: it runs once per token in benchmarks.
_ts_cache_sec = -1
_ts_cache_prefix = ""


def rfc3339_now() -> bytes:
    """Current UTC wall-clock time as RFC3339 with microseconds."""
    global _ts_cache_sec, _ts_cache_prefix
    now = time.time()
    sec = int(now)
    if sec != _ts_cache_sec:
        _ts_cache_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache_sec = sec
    return b"%s.%06dZ" % (_ts_cache_prefix.encode(), int((now - sec) * 1e6))


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def model_digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(family: str, parameter_size: str, quant: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size,
        "quantization_level": quant,
    }


def _model_row(name: str) -> tuple[str, str, int, str, str]:
    """A known model's row of MODELS, or a made-up one for any other name."""
    for row in MODELS:
        if row[0] == name:
            return row
    return (name, name.split("/")[-1].split(":")[0], 1_000_000_000, "1B", "Q4_K_M")


def _build_tags(names: list[str] | None = None) -> bytes:
    rows = MODELS if names is None else [_model_row(n) for n in names]
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": "2025-05-01T10:00:00.000000Z",
            "size": size,
            "digest": model_digest(name),
            "details": _details(family, psize, quant),
        }
        for name, family, size, psize, quant in rows
    ]
    return dumps({"models": models})


def _build_ps(names: list[str] | None = None) -> bytes:
    rows = MODELS[:1] if names is None else [_model_row(n) for n in names]
    models = [
        {
            "name": name,
            "model": name,
            "size": size + 700_000_000,
            "digest": model_digest(name),
            "details": _details(family, psize, quant),
            "expires_at": "2099-01-01T00:00:00.000000Z",
            "size_vram": size + 700_000_000,
            "context_length": 4096,
        }
        for name, family, size, psize, quant in rows
    ]
    return dumps({"models": models})


def _build_openai_models(names: list[str] | None = None) -> bytes:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "library"}
        for name in (names if names is not None else [row[0] for row in MODELS])
    ]
    return dumps({"object": "list", "data": data})


def listing_bodies(models: list[str] | None, loaded: list[str] | None) -> tuple[bytes, bytes, bytes]:
    """The /api/tags, /api/ps and /v1/models bodies of a fake with these models (None: the defaults;
    with `models` and no `loaded`, none is loaded)."""
    if models is None and loaded is None:
        return TAGS_BODY, PS_BODY, V1_MODELS_BODY
    return _build_tags(models), _build_ps(loaded or []), _build_openai_models(models)


def tagged(name: str) -> str:
    """A model name as Ollama resolves it: lower case, with its tag (`llama3.2` -> `llama3.2:latest`)."""
    n = name.strip().lower()
    return n if ":" in n.rsplit("/", 1)[-1] else n + ":latest"


TAGS_BODY = _build_tags()
PS_BODY = _build_ps()
V1_MODELS_BODY = _build_openai_models()
VERSION_BODY = dumps({"version": VERSION})


@functools.lru_cache(maxsize=32)
def embedding_json(dims: int) -> bytes:
    """One embedding vector of `dims` values as a JSON array."""
    return b"[" + b",".join(_EMBED_VALUES[i % 16] for i in range(dims)) + b"]"
