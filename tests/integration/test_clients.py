"""Real clients through guardproxy: curl, the ollama package, the openai package."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

try:
    import ollama
    import openai
except ImportError:  # under Wine 8, pydantic-core's Rust extension does not load: see WINE_PYDANTIC
    ollama = openai = None  # type: ignore[assignment]

from conftest import KEY, Proxy
from guardproxy.testing.fake_ollama import FakeOllama
from support.wine import WINE_PYDANTIC

pytestmark = pytest.mark.wine_skip(WINE_PYDANTIC)


async def curl(*args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec("curl", "-sS", "--max-time", "10", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode or 0, out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_checklist(proxy: Proxy, fake: FakeOllama) -> None:
    base = proxy.url
    assert await curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}/health") == (0, b"200")
    assert await curl("-w", " %{http_code}", f"{base}/api/tags") == (0, b'{"error": "unauthorized"} 401')
    assert (await curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "X-API-Key: nope", f"{base}/api/tags"))[1] == b"401"
    rc, out = await curl("-H", f"X-API-Key: {KEY}", f"{base}/api/tags")
    assert rc == 0 and len(json.loads(out)["models"]) == 3
    rc, out = await curl("-N", "-H", f"X-API-Key: {KEY}", f"{base}/api/generate",
                         "-d", '{"model":"llama3.2","prompt":"hi","options":{"num_predict":6}}')
    lines = [json.loads(l) for l in out.splitlines()]
    assert rc == 0 and len(lines) == 7 and lines[-1]["done"] and lines[-1]["eval_count"] == 6
    # --http1.0 makes the upstream frame by close; the stream is still complete.
    rc, out = await curl("--http1.0", "-H", f"X-API-Key: {KEY}", f"{base}/api/generate",
                         "-d", '{"model":"llama3.2","prompt":"hi","options":{"num_predict":3}}')
    assert rc == 0 and json.loads(out.splitlines()[-1])["eval_count"] == 3


async def test_ollama_client_streaming_and_not(proxy: Proxy, fake: FakeOllama) -> None:
    client = ollama.AsyncClient(host=proxy.url, headers={"X-API-Key": KEY})
    tags = await client.list()
    assert [m.model for m in tags.models] == ["llama3.2:latest", "qwen3:8b", "mistral:7b"]
    parts = [p async for p in await client.generate(model="llama3.2", prompt="hi", stream=True,
                                                     options={"num_predict": 4})]
    assert "".join(p.response for p in parts) == " tok0 tok1 tok2 tok3" and parts[-1].eval_count == 4
    reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}],
                              options={"num_predict": 3})
    assert reply.message.content == " tok0 tok1 tok2"
    bad = ollama.AsyncClient(host=proxy.url, headers={"X-API-Key": "wrong"})
    with pytest.raises(ollama.ResponseError) as info:
        await bad.list()
    assert info.value.status_code == 401 and info.value.error == "unauthorized"


async def test_openai_client_streaming(proxy: Proxy, fake: FakeOllama) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=5,
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == " tok0 tok1 tok2 tok3 tok4"
    assert usage is not None and usage.completion_tokens == 5
    bad = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await client.close()
    await bad.close()
