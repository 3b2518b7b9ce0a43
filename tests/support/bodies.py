"""Request bodies for the fake Ollama (guardproxy/testing/fake_ollama)."""

from __future__ import annotations

import json
from typing import Any


def gen_body(model: str = "llama3.2", *, tokens: int = 3, delay: float = 0.0, stream: bool | None = None) -> bytes:
    """A /api/generate body: `tokens` tokens, `delay` seconds apart; without `stream`, Ollama's default (streamed)."""
    body: dict[str, Any] = {"model": model, "prompt": "hi"}
    if stream is not None:
        body["stream"] = stream
    body.update(options={"num_predict": tokens}, fake_delay=delay)
    return json.dumps(body).encode()
