"""Smoke tests for the fake Ollama server's wire format."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from datetime import datetime, timezone

import pytest

try:
    import ollama
    import openai
except ImportError:  # under Wine 8, pydantic-core's Rust extension does not load: see WINE_PYDANTIC
    ollama = openai = None  # type: ignore[assignment]

from guardproxy.testing.fake_ollama import FakeOllama
from support.wine import WINE_PYDANTIC
from support.raw_http import read_response, request_bytes


async def open_raw(fake: FakeOllama) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", fake.port)


@pytest.mark.asyncio
async def test_keepalive_pipelining_and_recording() -> None:
    async with await FakeOllama.start() as fake:
        reader, writer = await open_raw(fake)
        body = json.dumps({"model": "llama3.2", "input": "hi"}).encode()
        # Three pipelined requests in one write, the middle one with a chunked body.
        chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        writer.write(
            request_bytes("GET", "/api/version")
            + request_bytes("POST", "/api/embed", chunked, {"Transfer-Encoding": "chunked"})
            + request_bytes("GET", "/api/tags?x=1")
        )
        await writer.drain()
        r1 = await read_response(reader)
        r2 = await read_response(reader)
        r3 = await read_response(reader)
        assert r1.status == 200 and json.loads(r1.body) == {"version": "0.12.0"}
        assert r1.header("content-length") == str(len(r1.body))
        assert r2.status == 200 and len(json.loads(r2.body)["embeddings"]) == 1
        names = [m["name"] for m in json.loads(r3.body)["models"]]
        assert names == ["llama3.2:latest", "qwen3:8b", "mistral:7b"]
        assert fake.connections_opened == 1 and fake.open_connections == 1
        assert [(r.method, r.target) for r in fake.requests] == [
            ("GET", "/api/version"),
            ("POST", "/api/embed"),
            ("GET", "/api/tags?x=1"),
        ]
        assert fake.requests[1].body == body
        assert ("transfer-encoding", "chunked") in fake.requests[1].headers
        assert fake.requests[0].headers[0] == ("host", "127.0.0.1")
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
async def test_ndjson_stream_one_line_per_chunk() -> None:
    async with await FakeOllama.start(default_tokens=3) as fake:
        reader, writer = await open_raw(fake)
        for path, key in (("/api/generate", "response"), ("/api/chat", "message")):
            body = json.dumps({"model": "llama3.2", "prompt": "x", "messages": [], "options": {"num_predict": 4}})
            before = datetime.now(timezone.utc)
            writer.write(request_bytes("POST", path, body.encode()))
            resp = await read_response(reader)
            after = datetime.now(timezone.utc)
            assert resp.status == 200
            assert resp.header("content-type") == "application/x-ndjson"
            assert resp.header("transfer-encoding") == "chunked"
            assert len(resp.chunks) == 5
            lines = [json.loads(c) for c in resp.chunks]
            assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in resp.chunks)
            texts = [line[key] if key == "response" else line[key]["content"] for line in lines]
            assert texts == [" tok0", " tok1", " tok2", " tok3", ""]
            for line in lines:
                ts = datetime.fromisoformat(line["created_at"])
                assert before <= ts <= after
                assert line["model"] == "llama3.2"
            assert [line["done"] for line in lines] == [False] * 4 + [True]
            assert lines[-1]["eval_count"] == 4 and lines[-1]["done_reason"] == "stop"
            assert fake.bytes_sent_last_stream == len(resp.body)
        writer.close()


@pytest.mark.asyncio
async def test_token_delay_paces_created_at() -> None:
    async with await FakeOllama.start() as fake:
        reader, writer = await open_raw(fake)
        body = json.dumps({"model": "m", "prompt": "x", "fake_delay": 0.02, "options": {"num_predict": 3}})
        writer.write(request_bytes("POST", "/api/generate", body.encode()))
        resp = await read_response(reader)
        stamps = [datetime.fromisoformat(json.loads(c)["created_at"]) for c in resp.chunks[:3]]
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
        assert all(g >= 0.015 for g in gaps), gaps
        writer.close()


@pytest.mark.asyncio
async def test_host_and_origin_checks() -> None:
    async with await FakeOllama.start() as fake:
        reader, writer = await open_raw(fake)
        cases = [
            ({"Host": "evil.example"}, 403),
            ({"Host": "evil.example:11434"}, 403),
            ({"Host": "localhost:11434"}, 200),
            ({"Host": "[::1]:11434"}, 200),
            ({"Host": "0.0.0.0"}, 200),
            ({"Origin": "http://evil.example"}, 403),
            ({"Origin": "https://localhost:3000"}, 200),
            ({"Origin": "http://127.0.0.1"}, 200),
            ({"Origin": "tauri://anything"}, 200),
            ({"Origin": "null"}, 403),
        ]
        for headers, expected in cases:
            writer.write(request_bytes("GET", "/api/version", headers=headers))
            resp = await read_response(reader)
            assert resp.status == expected, headers
        # No Host at all is accepted (HTTP/1.0 style).
        writer.write(b"GET /api/version HTTP/1.0\r\n\r\n")
        resp = await read_response(reader)
        assert resp.status == 200
        assert await reader.read() == b""  # HTTP/1.0 closes
        assert len(fake.requests) == len(cases) + 1
        writer.close()


@pytest.mark.asyncio
async def test_errors() -> None:
    async with await FakeOllama.start() as fake:
        reader, writer = await open_raw(fake)
        writer.write(request_bytes("GET", "/nope"))
        assert (await read_response(reader)).status == 404
        writer.write(request_bytes("POST", "/api/tags", b"{}"))
        assert (await read_response(reader)).status == 405
        writer.write(request_bytes("POST", "/api/generate", b"{not json"))
        resp = await read_response(reader)
        assert resp.status == 400 and "error" in json.loads(resp.body)
        writer.write(request_bytes("POST", "/api/chat", b'{"messages":[]}'))
        assert (await read_response(reader)).status == 400
        # Garbage gets a 400 and the connection is closed; the server lives on.
        writer.write(b"\x00\x01 garbage\r\n\r\n")
        assert (await read_response(reader)).status == 400
        assert await reader.read() == b""
        r2, w2 = await open_raw(fake)
        w2.write(request_bytes("GET", "/api/version", headers={"Connection": "close"}))
        assert (await read_response(r2)).status == 200
        assert await r2.read() == b""
        writer.close()
        w2.close()


@pytest.mark.asyncio
async def test_blob_content_and_framing() -> None:
    async with await FakeOllama.start() as fake:
        reader, writer = await open_raw(fake)
        expected = (b"0123456789abcdef" * 10)[:100]
        writer.write(request_bytes("GET", "/fake/blob?size=100&chunk=30"))
        resp = await read_response(reader)
        assert [len(c) for c in resp.chunks] == [30, 30, 30, 10]
        assert resp.body == expected
        assert fake.bytes_sent_last_stream == 100
        writer.write(request_bytes("GET", "/fake/blob?size=100&chunk=30&framing=length"))
        resp = await read_response(reader)
        assert resp.header("content-length") == "100" and resp.body == expected
        writer.close()


@pytest.mark.asyncio
async def test_blob_backpressure_and_abort() -> None:
    size = 256 * 1024 * 1024
    async with await FakeOllama.start() as fake:
        reader, writer = await open_raw(fake)
        writer.write(request_bytes("GET", f"/fake/blob?size={size}"))
        await read_response(reader, head_only=True)
        # Round trips on another connection give the fake time to fill every
        # buffer; it must then be stuck far short of the full size.
        r2, w2 = await open_raw(fake)
        for _ in range(20):
            w2.write(request_bytes("GET", "/api/version"))
            await read_response(r2)
        assert 0 < fake.bytes_sent_last_stream < size // 4
        assert not fake.stream_aborted.is_set()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        await asyncio.wait_for(fake.stream_aborted.wait(), 5)
        assert fake.aborted_at is not None and fake.aborted_at <= time.monotonic()
        w2.close()


@pytest.mark.asyncio
async def test_stream_abort_on_client_close() -> None:
    async with await FakeOllama.start(token_delay=0.005) as fake:
        reader, writer = await open_raw(fake)
        body = json.dumps({"model": "m", "prompt": "x", "options": {"num_predict": 10_000}}).encode()
        writer.write(request_bytes("POST", "/api/generate", body))
        await read_response(reader, head_only=True)
        await reader.readuntil(b"\n")  # first line arrived
        writer.close()
        await asyncio.wait_for(fake.stream_aborted.wait(), 5)
        assert fake.aborted_at is not None
        assert fake.requests[-1].target == "/api/generate"


@pytest.mark.asyncio
async def test_close_drops_open_connections() -> None:
    fake = await FakeOllama.start()
    reader, writer = await open_raw(fake)
    writer.write(request_bytes("GET", "/api/version"))
    await read_response(reader)
    assert fake.open_connections == 1
    await fake.close()
    assert fake.open_connections == 0
    assert await reader.read() == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", fake.port)


@pytest.mark.asyncio
@pytest.mark.wine_skip(WINE_PYDANTIC)
async def test_ollama_client() -> None:
    async with await FakeOllama.start(default_tokens=3) as fake:
        client = ollama.AsyncClient(host=fake.url)
        try:
            await check_ollama_client(client, fake)
        finally:
            await client.close()


async def check_ollama_client(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    listed = await client.list()
    assert [m.model for m in listed.models] == ["llama3.2:latest", "qwen3:8b", "mistral:7b"]
    ps = await client.ps()
    assert ps.models[0].model == "llama3.2:latest"

    res = await client.generate(model="llama3.2", prompt="hi")
    assert res.response == " tok0 tok1 tok2" and res.done and res.eval_count == 3

    parts = [
        p
        async for p in await client.chat(
            model="llama3.2",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            options={"num_predict": 4},
        )
    ]
    assert "".join(p.message.content for p in parts) == " tok0 tok1 tok2 tok3"
    assert parts[-1].done and parts[-1].done_reason == "stop"

    emb = await client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 16

    statuses = [p.status async for p in await client.pull("llama3.2", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert json.loads(fake.requests[-1].body)["model"] == "llama3.2"


@pytest.mark.asyncio
@pytest.mark.wine_skip(WINE_PYDANTIC)
async def test_openai_client() -> None:
    async with await FakeOllama.start(default_tokens=3) as fake:
        client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0)
        try:
            models = await client.models.list()
            assert [m.id for m in models.data][0] == "llama3.2:latest"

            done = await client.chat.completions.create(
                model="llama3.2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert done.choices[0].message.content == " tok0 tok1"
            assert done.usage is not None and done.usage.completion_tokens == 2

            stream = await client.chat.completions.create(
                model="llama3.2",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == " tok0 tok1 tok2"
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
            assert chunks[-1].choices == [] and chunks[-1].usage is not None
            assert chunks[-1].usage.total_tokens == 29

            comp = await client.completions.create(model="llama3.2", prompt="hi", stream=True)
            assert "".join([c.choices[0].text async for c in comp]) == " tok0 tok1 tok2"
        finally:
            await client.close()
        assert fake.requests[0].header("authorization") == "Bearer x"
