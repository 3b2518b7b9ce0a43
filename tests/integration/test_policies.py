"""Policies over real sockets: scopes, paths, models and CORS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from conftest import KEY, Proxy
from guardproxy.config.model import Cors, KeyEntry
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.raw_http import exchange, fetch, read_response, request_bytes, without_request_id
from support.policy_gate import APP, PHONE, ADMIN, digest, start, gp, stop  # noqa: F401 (gp: a fixture)


# --- admin endpoints and paths -------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/pull", "/api/push", "/api/delete", "/api/create", "/api/copy",
                                  "/api/blobs/sha256:0123"])
async def test_admin_endpoints_denied_to_ordinary_keys(gp: Proxy, fake: FakeOllama, path: str) -> None:
    r = await fetch(gp.port, "POST", path, b'{"model":"llama3.2"}', PHONE)
    assert r.status == 403 and "administrative" in json.loads(r.body)["error"]
    assert fake.connections_opened == 0


async def test_admin_key_reaches_admin_endpoints(gp: Proxy, fake: FakeOllama) -> None:
    r = await fetch(gp.port, "POST", "/api/pull", b'{"model":"llama3.2","stream":false}', ADMIN)
    assert r.status == 200 and fake.requests[-1].target == "/api/pull"


PATH_VARIANTS = [b"//api/pull", b"/api/./pull", b"/api/%70ull", b"/api%2Fpull", b"/api/x/../pull",
                 b"/api/pull/.", b"http://127.0.0.1:11434/api/pull", b"/api/PULL/../pull"]


@pytest.mark.parametrize("target", PATH_VARIANTS)
@pytest.mark.parametrize("auth", [PHONE, ADMIN], ids=["ordinary", "admin"])
async def test_path_bypass_variants_refused_and_never_forwarded(gp: Proxy, fake: FakeOllama, target: bytes,
                                                                 auth: dict[str, str]) -> None:
    body = b'{"model":"llama3.2"}'
    raw = (b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + auth["X-API-Key"].encode() +
           b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    out = await exchange(gp.port, raw)
    assert out.startswith(b"HTTP/1.1 400 ")
    # An absolute-form target is already refused by the head check, with its own message.
    if target.startswith(b"/"):
        assert out.endswith(b'{"error": "request path must be in normal form"}')
    assert fake.connections_opened == 0 and fake.requests == []


# --- models ------------------------------------------------------------------------------

async def test_disallowed_model_is_403_and_never_forwarded(gp: Proxy, fake: FakeOllama) -> None:
    for path, body in [("/api/generate", gen_body("mistral:7b")),
                       ("/api/chat", b'{"model":"mistral:7b","messages":[]}'),
                       ("/v1/chat/completions", b'{"model":"mistral:7b","messages":[]}'),
                       ("/api/show", b'{"name":"mistral:7b"}')]:
        r = await fetch(gp.port, "POST", path, body, APP)
        assert r.status == 403 and "mistral:7b" in json.loads(r.body)["error"], path
    assert fake.connections_opened == 0


async def test_allowed_model_body_forwarded_exactly_with_length(gp: Proxy, fake: FakeOllama) -> None:
    body = gen_body("llama3.2", tokens=4)
    r = await fetch(gp.port, "POST", "/api/generate", body, APP)
    assert r.status == 200 and json.loads(r.chunks[-1])["eval_count"] == 4
    # A chunked body is read whole (it is small) and forwarded with its length.
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
    reader, writer = await asyncio.open_connection("127.0.0.1", gp.port)
    writer.write(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() +
                 b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    r2 = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert r2.status == 200
    for rec in fake.requests:
        assert rec.body == body and rec.header("content-length") == str(len(body))
        assert rec.header("transfer-encoding") is None


async def test_listings_filtered_to_the_keys_models(gp: Proxy, fake: FakeOllama) -> None:
    tags = json.loads((await fetch(gp.port, "GET", "/api/tags", headers=APP)).body)
    assert sorted(m["name"] for m in tags["models"]) == ["llama3.2:latest", "qwen3:8b"]
    v1 = json.loads((await fetch(gp.port, "GET", "/v1/models", headers=APP)).body)
    assert sorted(m["id"] for m in v1["data"]) == ["llama3.2:latest", "qwen3:8b"]
    ps = await fetch(gp.port, "GET", "/api/ps", headers=APP)
    assert ps.status == 200 and all(m["name"] != "mistral:7b" for m in json.loads(ps.body)["models"])
    full = json.loads((await fetch(gp.port, "GET", "/api/tags", headers=PHONE)).body)
    assert len(full["models"]) == 3


async def test_expired_key_gets_the_same_401_as_an_unknown_key(fake: FakeOllama, tmp_path: Path) -> None:
    from datetime import date
    p = await start(fake.port, tmp_path, keys=(KeyEntry("old", digest(KEY), expires=date(2020, 1, 1)),))
    try:
        expired = await exchange(p.port, request_bytes("GET", "/api/tags", headers={**APP, "Connection": "close"}))
        unknown = await exchange(p.port, request_bytes("GET", "/api/tags", headers={"X-API-Key": "gp_nope-" + "x" * 30,
                                                                                  "Connection": "close"}))
        assert without_request_id(expired) == without_request_id(unknown) and expired.startswith(b"HTTP/1.1 401 ")
        assert fake.connections_opened == 0
    finally:
        await stop(p)


# --- CORS -------------------------------------------------------------------------------

def preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key"}


async def test_preflight_allowed_origin(gp: Proxy, fake: FakeOllama) -> None:
    r = await fetch(gp.port, "OPTIONS", "/api/chat", headers=preflight("https://app.example"))
    assert r.status == 204
    assert r.header("access-control-allow-origin") == "https://app.example"
    assert "POST" in r.header("access-control-allow-methods")
    assert {"content-type", "x-api-key", "authorization"} <= {
        h.strip().lower() for h in r.header("access-control-allow-headers").split(",")}
    assert r.header("access-control-max-age") == "600" and "Origin" in r.header("vary")
    assert r.header("access-control-allow-credentials") is None
    assert fake.connections_opened == 0


@pytest.mark.parametrize("origin", ["https://evil.example", "null"])
async def test_preflight_disallowed_or_null_origin_gets_no_cors(gp: Proxy, fake: FakeOllama, origin: str) -> None:
    r = await fetch(gp.port, "OPTIONS", "/api/chat", headers=preflight(origin))
    assert r.status == 204
    assert not [k for k, _ in r.headers if k.startswith("access-control-")]
    assert fake.connections_opened == 0


async def test_cors_on_proxied_responses_and_errors_origin_not_forwarded(gp: Proxy, fake: FakeOllama) -> None:
    origin = {"Origin": "https://app.example"}
    # The fake answers 403 to a non-local Origin, as Ollama does: a 200 proves it was not forwarded.
    r = await fetch(gp.port, "POST", "/api/generate", gen_body("llama3.2", tokens=2), {**APP, **origin})
    assert r.status == 200 and r.header("access-control-allow-origin") == "https://app.example"
    assert "Origin" in r.header("vary")
    assert all(rec.header("origin") is None for rec in fake.requests)
    for headers, status in [({}, 401), (APP, 403)]:
        e = await fetch(gp.port, "POST", "/api/generate", gen_body("mistral:7b"), {**headers, **origin})
        assert e.status == status and e.header("access-control-allow-origin") == "https://app.example"
    evil = await fetch(gp.port, "GET", "/api/tags", headers={**PHONE, "Origin": "https://evil.example"})
    assert evil.status == 200 and evil.header("access-control-allow-origin") is None


async def test_upstream_access_control_headers_are_replaced(tmp_path: Path) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Credentials: true\r\n"
                     b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()
    srv = await asyncio.start_server(upstream, "127.0.0.1", 0)
    p = await start(srv.sockets[0].getsockname()[1], tmp_path, cors=Cors(("https://app.example",)))
    try:
        r = await fetch(p.port, "GET", "/api/version", headers={**PHONE, "Origin": "https://app.example"})
        acl = [(k, v) for k, v in r.headers if k.startswith("access-control-")]
        assert ("access-control-allow-origin", "https://app.example") in acl
        assert ("access-control-allow-origin", "*") not in acl
        assert "access-control-allow-credentials" not in dict(acl) and r.body == b"ok"
    finally:
        await stop(p)
        srv.close()
        await srv.wait_closed()


async def test_cors_on_gateway_errors_after_the_upstream_was_reached(tmp_path: Path) -> None:
    # The upstream accepts the request, then hangs up without an answer: the 502
    # is guardproxy's own error, and browser code must be able to read it.
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()
    srv = await asyncio.start_server(upstream, "127.0.0.1", 0)
    p = await start(srv.sockets[0].getsockname()[1], tmp_path, cors=Cors(("https://app.example",)))
    try:
        r = await fetch(p.port, "GET", "/api/version", headers={**PHONE, "Origin": "https://app.example"})
        assert r.status == 502
        assert r.header("access-control-allow-origin") == "https://app.example"
    finally:
        await stop(p)
        srv.close()
        await srv.wait_closed()
