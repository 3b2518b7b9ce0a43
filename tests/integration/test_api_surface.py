"""Ollama's whole surface through the gate: who may use each route, the cloud scope, models read
as Ollama reads them, the newer generation APIs' slots and token counts, blob uploads."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path
from typing import AsyncIterator

import pytest
import zstandard

from conftest import Proxy, start_proxy
from guardproxy.config.model import KeyEntry
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.raw_http import fetch, read_response
from support.upstreams import RecordingUpstream

ORDINARY = "gp_surface-ordinary-0123456789abcdefghijklmn"
ADMIN = "gp_surface-admin-0123456789abcdefghijklmnopq"
LIMITED = "gp_surface-limited-0123456789abcdefghijklmno"
CLOUD = "gp_surface-cloud-0123456789abcdefghijklmnopq"
PINNED = "gp_surface-keepalive-0123456789abcdefghijklm"


def keys() -> tuple[KeyEntry, ...]:
    def k(name: str, key: str, **scopes: object) -> KeyEntry:
        return KeyEntry(name, bytes.fromhex(hash_key(key)), **scopes)  # type: ignore[arg-type]
    return (k("ordinary", ORDINARY), k("admin", ADMIN, admin=True), k("limited", LIMITED, models=("llama3.2",)),
            k("cloud", CLOUD, cloud=True), k("pinned", PINNED, max_keep_alive=1800.0))


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
async def gp(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Proxy]:
    p = await start_proxy(fake.port, tmp_path, keys=keys())
    try:
        yield p
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()


FORM_CT = "multipart/form-data; boundary=xXx"


def form(model: str) -> bytes:
    return (b'--xXx\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
            b"RIFF0000WAVE\r\n--xXx\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
            + model.encode() + b"\r\n--xXx--\r\n")


def body_for(path: str, model: str) -> tuple[bytes, dict[str, str]]:
    if path == "/v1/audio/transcriptions":
        return form(model), {"Content-Type": FORM_CT}
    if path == "/api/show":
        return json.dumps({"model": model}).encode(), {}
    fields = {"/api/chat": {"messages": []}, "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
              "/v1/messages": {"max_tokens": 3, "messages": []}, "/v1/images/generations": {"prompt": "a cat"},
              "/v1/images/edits": {"prompt": "a cat"}}.get(path, {"prompt": "hi", "input": "hi"})
    return json.dumps({"model": model, "stream": False, **fields}).encode(), {}


MODEL_ROUTES = ["/api/show", "/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/v1/chat/completions",
                "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages", "/v1/audio/transcriptions",
                "/v1/images/generations", "/v1/images/edits"]
ADMIN_ROUTES = [("POST", "/api/pull", b'{"model":"llama3.2","stream":false}'), ("POST", "/api/push", b'{"model":"x"}'),
                ("POST", "/api/create", b'{"model":"x","stream":false}'),
                ("POST", "/api/copy", b'{"source":"a","destination":"b"}'),
                ("DELETE", "/api/delete", b'{"model":"x"}'), ("POST", "/api/blobs/sha256:" + "0" * 64, b"blob"),
                ("POST", "/api/me", b""), ("POST", "/api/signout", b""), ("DELETE", "/api/user/keys/c3NoLWtleQ", b""),
                ("POST", "/api/experimental/web_search", b'{"query":"x"}'),
                ("POST", "/api/experimental/web_fetch", b'{"url":"https://example.com"}')]


@pytest.mark.parametrize("path", MODEL_ROUTES)
async def test_model_routes_for_every_kind_of_key(gp: Proxy, fake: FakeOllama, path: str) -> None:
    local, other, cloud = "llama3.2", "mistral:7b", "qwen3:480b-cloud"
    expect = [(ORDINARY, local, 200), (ORDINARY, cloud, 403), (ADMIN, cloud, 200), (LIMITED, local, 200),
              (LIMITED, other, 403), (LIMITED, cloud, 403), (CLOUD, cloud, 200), (CLOUD, other, 200)]
    for key, model, status in expect:
        seen = len(fake.requests)
        body, headers = body_for(path, model)
        r = await fetch(gp.port, "POST", path, body, {**auth(key), **headers})
        assert r.status == status, (key, model, r.body)
        if status == 403:
            assert len(fake.requests) == seen, "a refusal reached Ollama"
            assert ("cloud model" in json.loads(r.body)["error"]) is (model == cloud)
        else:
            assert fake.requests[-1].body == body  # forwarded exactly as sent


async def test_cloud_model_in_the_path(gp: Proxy, fake: FakeOllama) -> None:
    r = await fetch(gp.port, "GET", "/v1/models/gpt-oss:120b-cloud", headers=auth(ORDINARY))
    assert r.status == 403 and fake.requests == []
    r = await fetch(gp.port, "GET", "/v1/models/gpt-oss:120b-cloud", headers=auth(CLOUD))
    assert r.status == 200 and json.loads(r.body)["id"] == "gpt-oss:120b-cloud"
    assert (await fetch(gp.port, "GET", "/v1/models/llama3.2", headers=auth(ORDINARY))).status == 200


@pytest.mark.parametrize("method,path,body", ADMIN_ROUTES)
async def test_admin_routes(gp: Proxy, fake: FakeOllama, method: str, path: str, body: bytes) -> None:
    for key in (ORDINARY, LIMITED, CLOUD):
        r = await fetch(gp.port, method, path, body, auth(key))
        assert r.status == 403, key
        assert json.loads(r.body) == {"error": "this key may not use administrative endpoints"}
    assert fake.requests == []
    r = await fetch(gp.port, method, path, body, auth(ADMIN))
    assert r.status in (200, 201) and len(fake.requests) == 1


@pytest.mark.parametrize("method,path", [("GET", "/api/experimental/model-recommendations"), ("POST", "/v1/batches"),
                                         ("GET", "/api/generate"), ("GET", "/fake/blob")])
async def test_routes_ollama_adds_later_are_closed_to_ordinary_keys(gp: Proxy, fake: FakeOllama,
                                                                    method: str, path: str) -> None:
    for key in (ORDINARY, LIMITED, CLOUD):
        r = await fetch(gp.port, method, path, headers=auth(key))
        assert (r.status, json.loads(r.body)) == (404, {"error": "not found"}), key
    assert fake.requests == []
    r = await fetch(gp.port, method, path, headers=auth(ADMIN))
    assert len(fake.requests) == 1 and r.status != 403  # forwarded: Ollama answers for itself


@pytest.mark.parametrize("body", [
    b'{"model":"llama3.2","MODEL":"qwen3:480b-cloud","prompt":"x"}',
    b'{"model":"llama3.2","model":"qwen3:480b-cloud","prompt":"x"}',
    b'{"MoDeL":"llama3.2","model":"qwen3:480b-cloud","prompt":"x"}',
    b'{"\\u006dodel":"qwen3:480b-cloud","model":"llama3.2","prompt":"x"}',
])
async def test_bodies_ollama_could_read_differently_are_400(gp: Proxy, fake: FakeOllama, body: bytes) -> None:
    for key in (ORDINARY, LIMITED):
        r = await fetch(gp.port, "POST", "/api/generate", body, auth(key))
        assert r.status == 400 and re.search("more than once|spells", json.loads(r.body)["error"])
    assert fake.requests == []


async def test_the_value_ollama_uses_is_the_one_checked(gp: Proxy, fake: FakeOllama) -> None:
    # A single field in another letter case is the model Go's decoder uses, but not its cloud proxy: 400.
    r = await fetch(gp.port, "POST", "/api/generate", b'{"MODEL":"qwen3:480b-cloud","prompt":"x"}', auth(ORDINARY))
    assert r.status == 400 and "spells 'model'" in json.loads(r.body)["error"]
    r = await fetch(gp.port, "POST", "/api/generate", b'{"Model":"mistral:7b","prompt":"x"}', auth(LIMITED))
    assert r.status == 400 and fake.requests == []
    r = await fetch(gp.port, "POST", "/api/generate", b'{"model":"mistral:7b","prompt":"x"}', auth(LIMITED))
    assert r.status == 403 and fake.requests == []
    # /api/generate has no "name": a cloud name there is not a model.
    r = await fetch(gp.port, "POST", "/api/generate", b'{"model":"llama3.2","name":"x:cloud","stream":false}',
                    auth(ORDINARY))
    assert r.status == 200


async def test_zstd_bodies_are_checked_decompressed_and_forwarded_as_sent(gp: Proxy, fake: FakeOllama) -> None:
    zc = zstandard.ZstdCompressor()
    cloud = zc.compress(b'{"model":"qwen3:480b-cloud","messages":[{"role":"user","content":"hi"}]}')
    r = await fetch(gp.port, "POST", "/v1/chat/completions", cloud, {**auth(ORDINARY), "Content-Encoding": "zstd"})
    assert r.status == 403 and fake.requests == []
    local = zc.compress(b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}')
    r = await fetch(gp.port, "POST", "/v1/chat/completions", local, {**auth(ORDINARY), "Content-Encoding": "zstd"})
    assert r.status == 200 and fake.requests[-1].body == local
    # Ollama decodes zstd only on /v1 routes; any other coding cannot be checked: 415, nothing forwarded.
    for path, coding, data in (("/api/generate", "zstd", local), ("/v1/chat/completions", "gzip",
                                                                   gzip.compress(b'{"model":"llama3.2"}'))):
        r = await fetch(gp.port, "POST", path, data, {**auth(ORDINARY), "Content-Encoding": coding})
        assert r.status == 415 and "Content-Encoding" in json.loads(r.body)["error"]
    assert len(fake.requests) == 1
    # A key nothing needs the model of: forwarded untouched, whatever its coding.
    r = await fetch(gp.port, "POST", "/v1/chat/completions", local, {**auth(CLOUD), "Content-Encoding": "zstd"})
    assert r.status == 200 and fake.requests[-1].body == local


@pytest.mark.parametrize("keep_alive,status", [(-1, 403), ("-1m", 403), (0, 403), ("0s", 403), ("2h", 403),
                                               (3600, 403), ("10m", 200), (60, 200), (None, 200)])
async def test_keep_alive_limit(gp: Proxy, fake: FakeOllama, keep_alive: object, status: int) -> None:
    body = {"model": "llama3.2", "prompt": "x", "stream": False}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    r = await fetch(gp.port, "POST", "/api/generate", json.dumps(body).encode(), auth(PINNED))
    assert r.status == status, r.body
    assert len(fake.requests) == (status == 200)
    r = await fetch(gp.port, "POST", "/api/generate", json.dumps(body).encode(), auth(ORDINARY))
    assert r.status == 200  # without the field nothing changes


# --- token counts of every generation shape ----------------------------------------------------

COUNTED = [
    ("/api/generate", {"prompt": "x", "options": {"num_predict": 7}}, 7),
    ("/api/chat", {"messages": [], "options": {"num_predict": 7}}, 7),
    ("/api/generate", {"prompt": "x", "options": {"num_predict": 7}, "stream": False}, 7),
    ("/api/embed", {"input": ["a", "b"]}, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 7, "stream": True,
                              "stream_options": {"include_usage": True}}, 7),
    ("/v1/completions", {"prompt": "x", "max_tokens": 7}, 7),
    ("/v1/embeddings", {"input": "x"}, None),
    ("/v1/responses", {"input": "x", "max_output_tokens": 7, "stream": True}, 7),
    ("/v1/responses", {"input": "x", "max_output_tokens": 7, "metadata": {"note": "y" * 4000}, "stream": True}, 7),
    ("/v1/responses", {"input": "x", "max_output_tokens": 7}, 7),
    ("/v1/messages", {"messages": [], "max_tokens": 7, "stream": True}, 7),
    ("/v1/messages", {"messages": [], "max_tokens": 7}, 7),
]


@pytest.mark.parametrize("path,fields,completion", COUNTED)
async def test_token_counts_of_every_shape_reach_the_log(gp: Proxy, fake: FakeOllama, path: str,
                                                         fields: dict[str, object], completion: int | None) -> None:
    body = json.dumps({"model": "llama3.2", **fields}).encode()
    r = await fetch(gp.port, "POST", path, body, auth(ORDINARY))
    assert r.status == 200
    entry = gp.log_lines()[-1]
    prompt = 52 if path == "/api/embed" else 26  # the fake counts 26 per input
    assert entry.get("prompt_tokens") == prompt, entry
    assert entry.get("completion_tokens") == completion, entry


# --- every generation holds a slot -------------------------------------------------------------


GENERATIONS = [p for p in MODEL_ROUTES if p != "/api/show"]


# --- blob uploads --------------------------------------------------------------------------------

async def test_blob_uploads_take_max_blob_not_max_body(tmp_path: Path) -> None:
    from guardproxy.config.model import ServerLimits
    up = await RecordingUpstream.start()
    p = await start_proxy(up.port, tmp_path, keys=keys(), server=ServerLimits(max_body=1024, max_blob=64 * 1024))
    try:
        blob = b"\x00" * 32 * 1024  # over max_body, under max_blob
        r = await fetch(p.port, "POST", "/api/blobs/sha256:" + "a" * 64, blob, auth(ADMIN))
        assert r.status == 200 and up.bodies == [blob]
        r = await fetch(p.port, "POST", "/api/blobs/sha256:" + "a" * 64, b"\x00" * (64 * 1024 + 1), auth(ADMIN))
        assert r.status == 413
        r = await fetch(p.port, "POST", "/api/blobs/sha256:" + "a" * 64, blob, auth(ORDINARY))
        assert r.status == 403
        r = await fetch(p.port, "POST", "/api/generate", b"{" + b" " * 2000 + b"}", auth(ADMIN))
        assert r.status == 413  # every other route keeps max_body
        assert len(up.bodies) == 1
    finally:
        await p.server.stop(grace=0)
        await up.close()


@pytest.mark.perf
@pytest.mark.posix_only("measures memory with the resource module")
async def test_a_1_gib_blob_upload_streams_with_flat_memory(tmp_path: Path) -> None:
    import resource
    received = 0

    async def sink(reader, writer, up) -> None:  # type: ignore[no-untyped-def]
        nonlocal received
        head = await reader.readuntil(b"\r\n\r\n")
        size = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while received < size:
            data = await reader.read(1 << 20)
            if not data:
                return
            received += len(data)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    # Not a RecordingUpstream: that one keeps every byte it receives.
    server = await asyncio.start_server(lambda r, w: sink(r, w, None), "127.0.0.1", 0)
    p = await start_proxy(server.sockets[0].getsockname()[1], tmp_path, keys=keys())
    total, piece = 1 << 30, b"\x5a" * (1 << 20)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        writer.write(f"POST /api/blobs/sha256:{'b' * 64} HTTP/1.1\r\nHost: x\r\nX-API-Key: {ADMIN}\r\n"
                     f"Content-Length: {total}\r\n\r\n".encode())
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()
        r = await asyncio.wait_for(read_response(reader), 60)
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert r.status == 201 and received == total
        assert grown_kib < 64 * 1024, f"peak memory grew by {grown_kib} KiB for a 1 GiB upload"
        writer.close()
    finally:
        await p.server.stop(grace=0)
        server.close()
