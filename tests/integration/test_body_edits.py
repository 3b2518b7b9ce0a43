"""Over real sockets: web search as cloud use, placement options, clamps (the body at the fake upstream, the
X-Guardproxy-Clamped header, the log's "clamped"), [aliases] (rewrite, policy, listings, log), /v1/systemone
and /api/codex/*."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import zstandard

from conftest import KEY, OTHER_KEY, Proxy
from guardproxy.config.model import KeyEntry
from guardproxy.testing.fake_ollama import FakeOllama
from guardproxy.testing.fake_ollama.newer import WEB_SEARCH_ROUNDS
from guardproxy.testing.fake_ollama.shapes import PROMPT_TOKENS
from support.hosts import Fakes, fakes, gate, host, models_asked  # noqa: F401 (fakes: a fixture)
from support.policy_gate import ADMIN, ADMIN_KEY, digest, start, stop
from support.raw_http import exchange, fetch

CLOUD_KEY = "gp_cloud-key-0123456789abcdefghijklmnopqrstu"
CAPPED_KEY = "gp_capped-key-0123456789abcdefghijklmnopqrst"
APP = {"X-API-Key": KEY}            # only llama3.2 and qwen3:*; no cloud
PHONE = {"X-API-Key": OTHER_KEY}    # every local model; no cloud
CLOUD = {"X-API-Key": CLOUD_KEY}    # cloud = true
CAPPED = {"X-API-Key": CAPPED_KEY}  # max_num_ctx 4096, max_output_tokens 64

KEYS = (KeyEntry("app", digest(KEY), models=("qwen3:*", "llama3.2")),
        KeyEntry("phone", digest(OTHER_KEY)),
        KeyEntry("cloud", digest(CLOUD_KEY), cloud=True),
        KeyEntry("capped", digest(CAPPED_KEY), max_num_ctx=4096, max_output_tokens=64),
        KeyEntry("admin", digest(ADMIN_KEY), admin=True))
ALIASES = (("gpt-4o-mini", "llama3.2:latest"), ("claude-3-5-haiku", "mistral:7b"), ("big", "qwen3:480b-cloud"))


@pytest.fixture
async def gp(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Proxy]:
    p = await start(fake.port, tmp_path, keys=KEYS, aliases=ALIASES)
    try:
        yield p
    finally:
        await stop(p)


def last_log(gp: Proxy) -> dict[str, Any]:
    return gp.log_lines()[-1]


def forwarded(fake: FakeOllama) -> Any:
    return fake.requests[-1].json()


# --- web search is cloud use ------------------------------------------------------------------

MESSAGES_SEARCH = json.dumps({"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}],
                              "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]})
RESPONSES_SEARCH = json.dumps({"model": "llama3.2", "input": "q", "tools": [{"type": "web_search"}]})


@pytest.mark.parametrize("path,body,tool", [("/v1/messages", MESSAGES_SEARCH, "web_search_20250305"),
                                            ("/v1/responses", RESPONSES_SEARCH, "web_search")])
async def test_web_search_without_cloud_is_403_naming_the_tool(gp: Proxy, fake: FakeOllama, path: str, body: str,
                                                              tool: str) -> None:
    for auth in (APP, PHONE):
        r = await fetch(gp.port, "POST", path, body.encode(), auth)
        assert r.status == 403
        assert repr(tool) in json.loads(r.body)["error"] and "cloud" in json.loads(r.body)["error"]
    assert fake.connections_opened == 0 and fake.requests == []


async def test_web_search_in_a_zstd_body_and_in_an_escaped_type_is_seen(gp: Proxy, fake: FakeOllama) -> None:
    packed = zstandard.ZstdCompressor().compress(MESSAGES_SEARCH.encode())
    r = await fetch(gp.port, "POST", "/v1/messages", packed, {**PHONE, "Content-Encoding": "zstd"})
    assert r.status == 403
    escaped = RESPONSES_SEARCH.replace('"web_search"', '"web\\u005fsearch"').replace('"tools"', '"TOOLS"')
    r = await fetch(gp.port, "POST", "/v1/responses", escaped.encode(), PHONE)
    assert r.status == 403
    assert fake.connections_opened == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path,body", [("/v1/messages", MESSAGES_SEARCH), ("/v1/responses", RESPONSES_SEARCH)])
async def test_web_search_with_cloud_counts_the_summed_usage_of_every_round(gp: Proxy, fake: FakeOllama, path: str,
                                                                           body: str, stream: bool) -> None:
    data = json.loads(body) | {"stream": stream}
    r = await fetch(gp.port, "POST", path, json.dumps(data).encode(), CLOUD)
    assert r.status == 200
    n = 5 if path == "/v1/messages" else fake.default_tokens
    line = last_log(gp)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT_TOKENS * WEB_SEARCH_ROUNDS,
                                                                  n * WEB_SEARCH_ROUNDS)
    assert forwarded(fake)["tools"] == data["tools"]


async def test_a_tool_that_is_not_web_search_passes(gp: Proxy, fake: FakeOllama) -> None:
    body = json.loads(RESPONSES_SEARCH) | {"tools": [{"type": "function", "name": "web_search", "parameters": {}}]}
    r = await fetch(gp.port, "POST", "/v1/responses", json.dumps(body).encode(), PHONE)
    assert r.status == 200 and fake.requests[-1].body == json.dumps(body).encode()


# --- placement options ------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["num_gpu", "main_gpu", "num_thread", "num_batch", "use_mmap",
                                    "draft_num_predict"])
async def test_placement_options_are_403_for_ordinary_keys(gp: Proxy, fake: FakeOllama, option: str) -> None:
    body = json.dumps({"model": "llama3.2", "prompt": "hi", "options": {option: 1}}).encode()
    for auth in (PHONE, CLOUD, CAPPED):
        r = await fetch(gp.port, "POST", "/api/generate", body, auth)
        assert r.status == 403 and repr(option) in json.loads(r.body)["error"]
    assert fake.connections_opened == 0
    r = await fetch(gp.port, "POST", "/api/generate", body, ADMIN)
    assert r.status == 200 and fake.requests[-1].body == body  # an admin's body goes on untouched


# --- clamps ------------------------------------------------------------------------------------------

async def test_num_ctx_and_num_predict_lowered_at_the_upstream_header_and_log(gp: Proxy, fake: FakeOllama) -> None:
    body = (b'{"model":"llama3.2","prompt":"hi","stream":false,'
            b'"options":{"num_ctx":131072,"temperature":0.25,"num_predict":-1},"keep_alive":"5m"}')
    r = await fetch(gp.port, "POST", "/api/generate", body, CAPPED)
    assert r.status == 200
    assert r.header("x-guardproxy-clamped") == "options.num_ctx,options.num_predict"
    assert fake.requests[-1].body == (b'{"model":"llama3.2","prompt":"hi","stream":false,'
                                      b'"options":{"num_ctx":4096,"temperature":0.25,"num_predict":64},'
                                      b'"keep_alive":"5m"}')
    assert fake.requests[-1].header("content-length") == str(len(fake.requests[-1].body))
    assert json.loads(r.body)["eval_count"] == 64
    line = last_log(gp)
    assert line["clamped"] == ["options.num_ctx", "options.num_predict"] and line["completion_tokens"] == 64


async def test_within_the_limits_nothing_changes_and_no_header(gp: Proxy, fake: FakeOllama) -> None:
    body = b'{"model":"llama3.2","messages":[],"stream":false,"options":{"num_ctx":2048,"num_predict":3}}'
    r = await fetch(gp.port, "POST", "/api/chat", body, CAPPED)
    assert r.status == 200 and r.header("x-guardproxy-clamped") is None
    assert fake.requests[-1].body == body and "clamped" not in last_log(gp)


@pytest.mark.parametrize("path,body,fields", [
    ("/v1/chat/completions", {"messages": [], "max_tokens": 100000}, ["max_tokens", "max_completion_tokens"]),
    ("/v1/completions", {"prompt": "x", "max_completion_tokens": None}, ["max_tokens", "max_completion_tokens"]),
    ("/v1/responses", {"input": "x"}, ["max_output_tokens"]),
    ("/v1/messages", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4096,
                      "thinking": {"type": "enabled", "budget_tokens": 1024}}, ["max_tokens", "thinking.budget_tokens"]),
])
async def test_each_dialect_output_cap(gp: Proxy, fake: FakeOllama, path: str, body: dict[str, Any],
                                       fields: list[str]) -> None:
    r = await fetch(gp.port, "POST", path, json.dumps({"model": "llama3.2", **body}).encode(), CAPPED)
    assert r.status == 200 and r.header("x-guardproxy-clamped") == ",".join(fields)
    sent = forwarded(fake)
    for field in fields:
        if field == "thinking.budget_tokens":
            assert sent["thinking"] == {"type": "enabled", "budget_tokens": 63}
        else:
            assert sent[field] == 64
    assert last_log(gp)["clamped"] == fields


async def test_case_variants_and_duplicates_of_a_clamped_field_all_go(gp: Proxy, fake: FakeOllama) -> None:
    body = b'{"model":"llama3.2","max_tokens":10,"messages":[],"MAX_TOKENS":100000,"Max_Tokens":99999}'
    r = await fetch(gp.port, "POST", "/v1/chat/completions", body, CAPPED)
    assert r.status == 200
    raw = fake.requests[-1].body
    assert raw.lower().count(b"max_tokens") == 1 and json.loads(raw)["max_tokens"] == 64


async def test_a_chunked_body_is_clamped_and_sent_with_a_length(gp: Proxy, fake: FakeOllama) -> None:
    body = b'{"model":"llama3.2","messages":[],"stream":false,"options":{"num_ctx":99999}}'
    raw = (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nX-API-Key: " + CAPPED_KEY.encode() +
           b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
           b"%x\r\n%s\r\n" % (20, body[:20]) + b"%x\r\n%s\r\n" % (len(body) - 20, body[20:]) + b"0\r\n\r\n")
    out = await exchange(gp.port, raw)
    assert out.startswith(b"HTTP/1.1 200 ") and b"X-Guardproxy-Clamped: options.num_ctx,options.num_predict" in out
    got = fake.requests[-1]
    assert got.header("transfer-encoding") is None and got.header("content-length") == str(len(got.body))
    assert got.json()["options"] == {"num_ctx": 4096, "num_predict": 64}


async def test_a_zstd_body_is_clamped_and_forwarded_as_identity(gp: Proxy, fake: FakeOllama) -> None:
    body = b'{"model":"llama3.2","messages":[],"max_tokens":5000}'
    packed = zstandard.ZstdCompressor().compress(body)
    r = await fetch(gp.port, "POST", "/v1/chat/completions", packed, {**CAPPED, "Content-Encoding": "zstd"})
    assert r.status == 200
    got = fake.requests[-1]
    assert got.header("content-encoding") is None and got.json()["max_tokens"] == 64


async def test_a_streamed_generation_carries_the_header(gp: Proxy, fake: FakeOllama) -> None:
    r = await fetch(gp.port, "POST", "/api/generate", b'{"model":"llama3.2","prompt":"x"}', CAPPED)
    assert r.status == 200 and r.header("transfer-encoding") == "chunked"
    assert r.header("x-guardproxy-clamped") == "options.num_predict"
    assert forwarded(fake)["options"] == {"num_predict": 64}


# --- aliases -----------------------------------------------------------------------------------------------

async def test_an_alias_runs_its_target_and_the_log_has_both(gp: Proxy, fake: FakeOllama) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":false}'
    r = await fetch(gp.port, "POST", "/v1/chat/completions", body, APP)
    assert r.status == 200
    assert fake.requests[-1].body == body.replace(b'"gpt-4o-mini"', b'"llama3.2:latest"')
    line = last_log(gp)
    assert (line["model"], line["alias"]) == ("llama3.2:latest", "gpt-4o-mini")
    assert r.header("x-guardproxy-clamped") is None


async def test_the_key_policy_judges_the_target(gp: Proxy, fake: FakeOllama) -> None:
    # app may use llama3.2 and qwen3:*, not mistral: its alias is refused, whatever the alias is called.
    r = await fetch(gp.port, "POST", "/api/chat", b'{"model":"claude-3-5-haiku","messages":[]}', APP)
    assert r.status == 403 and "mistral:7b" in json.loads(r.body)["error"]
    # A cloud target needs cloud = true.
    r = await fetch(gp.port, "POST", "/api/generate", b'{"model":"big","prompt":"x"}', PHONE)
    assert r.status == 403 and "cloud" in json.loads(r.body)["error"]
    assert fake.connections_opened == 0
    r = await fetch(gp.port, "POST", "/api/generate", b'{"model":"claude-3-5-haiku","stream":false}', PHONE)
    assert r.status == 200 and forwarded(fake)["model"] == "mistral:7b"


async def test_an_alias_is_clamped_too(gp: Proxy, fake: FakeOllama) -> None:
    r = await fetch(gp.port, "POST", "/v1/messages", b'{"model":"gpt-4o-mini","max_tokens":1000,"messages":[]}',
                    CAPPED)
    assert r.status == 200 and forwarded(fake) == {"model": "llama3.2:latest", "max_tokens": 64, "messages": []}
    line = last_log(gp)
    assert line["alias"] == "gpt-4o-mini" and line["clamped"] == ["max_tokens"]


def _names(path: str, body: bytes) -> set[str]:
    data = json.loads(body)
    return {m["id"] for m in data["data"]} if path == "/v1/models" else {m["name"] for m in data["models"]}


@pytest.mark.parametrize("path", ["/v1/models", "/api/tags"])
async def test_listings_show_an_alias_to_every_key_that_may_use_its_target(gp: Proxy, fake: FakeOllama,
                                                                           path: str) -> None:
    app = _names(path, (await fetch(gp.port, "GET", path, None, APP)).body)
    assert "gpt-4o-mini" in app and "claude-3-5-haiku" not in app and "big" not in app
    phone = _names(path, (await fetch(gp.port, "GET", path, None, PHONE)).body)
    assert {"gpt-4o-mini", "claude-3-5-haiku"} <= phone and "big" not in phone
    cloud = _names(path, (await fetch(gp.port, "GET", path, None, CLOUD)).body)
    assert {"gpt-4o-mini", "claude-3-5-haiku", "big"} <= cloud


async def test_an_alias_entry_copies_its_listed_target(gp: Proxy, fake: FakeOllama) -> None:
    tags = json.loads((await fetch(gp.port, "GET", "/api/tags", None, PHONE)).body)["models"]
    by_name = {m["name"]: m for m in tags}
    alias, target = by_name["gpt-4o-mini"], by_name["llama3.2:latest"]
    assert alias["digest"] == target["digest"] and alias["size"] == target["size"]
    assert alias["model"] == "gpt-4o-mini"


async def test_v1_models_retrieve_of_an_alias(gp: Proxy, fake: FakeOllama) -> None:
    r = await fetch(gp.port, "GET", "/v1/models/gpt-4o-mini", None, APP)
    assert r.status == 200 and fake.requests[-1].target == "/v1/models/llama3.2:latest"
    assert last_log(gp)["alias"] == "gpt-4o-mini"


# --- Ollama after 0.33 --------------------------------------------------------------------------------------

async def test_systemone_is_a_generation_with_counts_and_keep_alive(fake: FakeOllama, tmp_path: Path) -> None:
    keys = (KeyEntry("app", digest(KEY), models=("llama3.2",), max_keep_alive=600.0, max_concurrent=1),)
    p = await start(fake.port, tmp_path, keys=keys)
    try:
        r = await fetch(p.port, "POST", "/v1/systemone", b'{"model":"llama3.2","input":"hi"}', APP)
        assert r.status == 200
        line = p.log_lines()[-1]
        assert (line["model"], line["prompt_tokens"], line["completion_tokens"]) == ("llama3.2", PROMPT_TOKENS,
                                                                                      fake.default_tokens)
        for body in (b'{"model":"mistral","input":"x"}', b'{"model":"llama3.2","keep_alive":0}',
                     b'{"model":"llama3.2","keep_alive":"-1s"}'):
            r = await fetch(p.port, "POST", "/v1/systemone", body, APP)
            assert r.status == 403
        assert len(fake.requests) == 1
    finally:
        await stop(p)


@pytest.mark.parametrize("method,path", [("POST", "/api/codex/v1/responses"), ("GET", "/api/codex/models"),
                                         ("DELETE", "/api/codex/a/b/c"), ("GET", "/api/codex")])
async def test_codex_is_admin_only(gp: Proxy, fake: FakeOllama, method: str, path: str) -> None:
    for auth in (APP, PHONE, CLOUD):
        r = await fetch(gp.port, method, path, b"{}" if method == "POST" else None, auth)
        assert r.status == 403 and "administrative" in json.loads(r.body)["error"]
    assert fake.connections_opened == 0
    r = await fetch(gp.port, method, path, b"{}" if method == "POST" else None, ADMIN)
    assert r.status == 200 and json.loads(r.body)["path"] == path
    assert last_log(gp)["path"] == path


async def test_several_hosts_route_by_the_target_and_merged_listings_show_aliases(fakes: Fakes,
                                                                                  tmp_path: Path) -> None:
    a = await fakes.start(0, models=["llama3.2"])
    b = await fakes.start(1, models=["mistral:7b"])
    async with gate(tmp_path, (host(0, a), host(1, b)), interval=5.0, keys=KEYS, aliases=ALIASES) as proxy:
        for _ in range(3):
            r = await fetch(proxy.port, "POST", "/api/generate", b'{"model":"claude-3-5-haiku","stream":false}',
                            PHONE)
            assert r.status == 200
        app = _names("/api/tags", (await fetch(proxy.port, "GET", "/api/tags", None, APP)).body)
        phone = _names("/v1/models", (await fetch(proxy.port, "GET", "/v1/models", None, PHONE)).body)
    assert models_asked(b) == ["mistral:7b"] * 3 and models_asked(a) == []
    assert app == {"llama3.2", "gpt-4o-mini"}
    assert phone == {"llama3.2", "mistral:7b", "gpt-4o-mini", "claude-3-5-haiku"}
