"""The pure policy modules with byte literals and a fake clock."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import pytest

from guardproxy.decisions.auth import KeyRing
from guardproxy.config.load import parse_config
from guardproxy.config.model import Ban, Cors, ConfigError, KeyEntry, Rate
from guardproxy.config.values import parse_rate
from guardproxy.decisions.cors import CorsPolicy, is_preflight
from guardproxy.wire.errors import BadRequest, Forbidden, Unauthorized
from guardproxy.wire.heads import parse_request_head
from guardproxy.decisions.limits import BanTable, ConcurrencyGate, QueueFull, RateTable, TrustedProxies
from guardproxy.decisions import routes as policy
from guardproxy.engine.tokens import join_tail, usage_from_tail
from guardproxy.ops.usage import summarise

# --- config --------------------------------------------------------------------------

FULL = """\
[[keys]]
name = "vercel-app"
key = "0123456789abcdef-plain"
admin = false
models = ["qwen3:*", "llama3.2"]
rate = "30/min"
max_concurrent = 2
expires = 2027-01-31

[cors]
origins = ["https://sysofti.com"]
max_age = 600

[limits]
per_ip = "5/s"
max_concurrent = 8
queue_timeout = "30s"
trusted_proxies = ["10.0.0.0/8", "::1"]

[ban]
after_failures = 20
window = "10min"
duration = "15min"
"""


def load(text: str):
    return parse_config(tomllib.loads(text), Path("g.toml"), text)


def test_full_policy_config_reads() -> None:
    c = load(FULL)
    (k,) = c.keys
    assert (k.admin, k.models, k.rate, k.max_concurrent, k.expires) == \
        (False, ("qwen3:*", "llama3.2"), Rate(30, 60.0), 2, date(2027, 1, 31))
    assert c.cors == Cors(("https://sysofti.com",), 600)
    assert c.limits.per_ip == Rate(5, 1.0) and c.limits.max_concurrent == 8
    assert c.ban == Ban(20, 600.0, 900.0)


@pytest.mark.parametrize("old,new,where", [
    ('rate = "30/min"', 'rate = "lots"', 'g.toml:6: keys[0].rate: expected a rate like "30/min"'),
    ("admin = false", 'admin = "no"', "g.toml:4: keys[0].admin: expected true or false"),
    ("max_concurrent = 2", "max_concurrent = 0", "g.toml:7: keys[0].max_concurrent: expected a whole number >= 1"),
    ("expires = 2027-01-31", 'expires = "soon"', "g.toml:8: keys[0].expires: expected a date"),
    ('origins = ["https://sysofti.com"]', 'origins = ["https://sysofti.com/app"]', "g.toml:11: cors.origins: expected exact origins"),
    ('"10.0.0.0/8"', '"10.0.0.0/33"', "g.toml:18: limits.trusted_proxies: expected CIDRs"),
    ('window = "10min"', 'window = "a while"', "g.toml:22: ban.window: expected a duration"),
    ("[ban]", "[bans]", "g.toml:20: bans: expected one of the known fields"),
])
def test_config_mistakes_are_one_line_with_file_line_field(old: str, new: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(FULL.replace(old, new))
    assert str(e.value).startswith(where) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,rate", [("30/min", Rate(30, 60)), ("5/s", Rate(5, 1)), ("1000/h", Rate(1000, 3600)),
                                       ("10/5min", Rate(10, 300))])
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


# --- keys ------------------------------------------------------------------------------

def head(target: str = "/api/tags", method: str = "GET", **headers: str):
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return parse_request_head(f"{method} {target} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())


def test_expired_key_is_unauthorized_like_an_unknown_one() -> None:
    c = load(FULL)
    ring = KeyRing(c.keys)
    req = head(X_API_Key="0123456789abcdef-plain")
    assert ring.identify(req, date(2027, 1, 31)).name == "vercel-app"
    with pytest.raises(Unauthorized) as e:
        ring.identify(req, date(2027, 2, 1))
    assert (e.value.status, e.value.message) == (401, "unauthorized")


# --- paths and models ----------------------------------------------------------------

@pytest.mark.parametrize("target", [b"//api/pull", b"/api/./pull", b"/api/%70ull", b"/api%2Fpull", b"/api/x/../pull",
                                    b"http://127.0.0.1:11434/api/pull", b"*", b"/api/pull/.", b"/api\\pull",
                                    b"/api/pull/..", b"/%2e/api/pull"])
def test_paths_normalisation_would_change_are_refused(target: bytes) -> None:
    with pytest.raises(BadRequest):
        policy.check_path(target)


def test_normal_paths_pass_with_query() -> None:
    assert policy.check_path(b"/api/blobs/sha256:abc?x=%2F") == b"/api/blobs/sha256:abc"


@pytest.mark.parametrize("path", [b"/api/pull", b"/api/push", b"/api/delete", b"/api/create", b"/api/copy",
                                  b"/api/blobs/sha256:00", b"/api/blobs", b"/api/pull/"])
def test_admin_paths(path: bytes) -> None:
    assert policy.is_admin_path(path)
    with pytest.raises(Forbidden):
        policy.check_endpoint(KeyEntry("k", b""), path)
    policy.check_endpoint(KeyEntry("k", b"", admin=True), path)


@pytest.mark.parametrize("name,ok", [("qwen3:8b", True), ("qwen3", True), ("QWEN3:8B", True), ("llama3.2", True),
                                     ("llama3.2:latest", True), ("registry.ollama.ai/library/llama3.2", True),
                                     ("llama3.2:1b", False), ("mistral:7b", False), ("qwen3x", False)])
def test_model_globs(name: str, ok: bool) -> None:
    assert policy.model_allowed(("qwen3:*", "llama3.2"), name) is ok


def test_model_body_checks_every_spelling_of_the_field() -> None:
    key = KeyEntry("k", b"", models=("llama3.2",))
    assert policy.check_models(key, b'{"model":"llama3.2","prompt":"hi"}') == "llama3.2"
    # Ollama's JSON decoder matches field names case-insensitively, last one wins.
    for body in (b'{"model":"llama3.2","MODEL":"mistral:7b"}', b'{"model":"llama3.2","name":"mistral:7b"}',
                 b'{"model":"llama3.2","model":"mistral:7b"}'):
        with pytest.raises(Forbidden):
            policy.check_models(key, body)
    for body in (b'nope', b'[]', b'{"prompt":"x"}', b'{"model":3}'):
        with pytest.raises(BadRequest):
            policy.check_models(key, body)


def test_filter_listing() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    out = policy.filter_listing(b"/api/tags", key, b'{"models":[{"name":"qwen3:8b"},{"name":"llama3.2:latest"}]}')
    assert out == b'{"models":[{"name":"qwen3:8b"}]}'
    out = policy.filter_listing(b"/v1/models", key, b'{"object":"list","data":[{"id":"llama3.2:latest"},{"id":"qwen3:8b"}]}')
    assert out == b'{"object":"list","data":[{"id":"qwen3:8b"}]}'


# --- CORS ------------------------------------------------------------------------------

def test_cors_preflight_decisions() -> None:
    c = CorsPolicy(Cors(("https://app.example",), 600))
    ok = head("/api/chat", "OPTIONS", Origin="https://app.example", Access_Control_Request_Method="POST",
              Access_Control_Request_Headers="content-type, x-api-key, x-stainless-os")
    assert is_preflight(ok)
    h = dict(c.preflight_headers(ok))
    assert h["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in h["Access-Control-Allow-Methods"]
    assert h["Access-Control-Allow-Headers"] == "Content-Type, X-API-Key, Authorization, x-stainless-os"
    assert h["Access-Control-Max-Age"] == "600" and "Origin" in h["Vary"]
    assert "Access-Control-Allow-Credentials" not in h
    for origin in ("https://evil.example", "null", "https://app.example.evil", "http://app.example"):
        bad = head("/api/chat", "OPTIONS", Origin=origin, Access_Control_Request_Method="POST")
        assert not any(k.startswith("Access-Control") for k, _ in c.preflight_headers(bad))


def test_cors_wildcard_never_with_credentials() -> None:
    c = CorsPolicy(Cors(("*",)))
    h = dict(c.response_headers(b"https://any.example"))
    assert h["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in h
    assert c.response_headers(b"null") == [("Vary", "Origin")]
    assert CorsPolicy(Cors()).response_headers(b"https://x") == []


# --- limits ----------------------------------------------------------------------------

def test_token_bucket_with_fake_clock() -> None:
    t = RateTable()
    r = Rate(3, 60.0)
    assert [t.hit("a", r, 0.0) for _ in range(3)] == [0, 0, 0]
    assert t.hit("a", r, 0.0) == pytest.approx(20.0)
    assert t.hit("b", r, 0.0) == 0  # another address has its own bucket
    assert t.hit("a", r, 19.0) == pytest.approx(1.0)
    assert t.hit("a", r, 20.0) == 0


def test_tables_are_bounded() -> None:
    t = RateTable(max_tracked=100)
    bans = BanTable(Ban(2, 60, 60), max_tracked=100)
    for i in range(10000):
        t.hit(f"10.0.{i // 256}.{i % 256}", Rate(1, 1), 0.0)
        bans.failure(f"ip{i}", 0.0)
        bans.failure(f"ip{i}", 0.0)
    assert len(t) == 100 and bans.sizes()[0] <= 100 and bans.sizes()[1] <= 100


def test_ban_and_unban_with_fake_clock() -> None:
    b = BanTable(Ban(3, 60.0, 900.0))
    assert not b.failure("1.2.3.4", 0) and not b.failure("1.2.3.4", 1)
    assert b.retry_after("1.2.3.4", 2) == 0
    assert b.failure("1.2.3.4", 2)
    assert b.retry_after("1.2.3.4", 3) == pytest.approx(899)
    assert b.retry_after("5.6.7.8", 3) == 0
    assert b.retry_after("1.2.3.4", 902) == 0
    # Failures spread wider than the window never ban.
    for t in range(0, 1000, 61):
        assert not b.failure("9.9.9.9", t)


def test_client_address_trusts_only_trusted_peers() -> None:
    tp = TrustedProxies(["10.0.0.0/8"])
    assert tp.client_address("203.0.113.9", [b"1.1.1.1"], []) == "203.0.113.9"
    assert tp.client_address("10.0.0.2", [b"6.6.6.6, 198.51.100.7"], []) == "198.51.100.7"
    assert tp.client_address("10.0.0.2", [b"198.51.100.7, 10.0.0.5"], []) == "198.51.100.7"
    assert tp.client_address("10.0.0.2", [], [b'for="[2001:db8::1]:4711", for=10.1.1.1']) == "2001:db8::1"
    assert tp.client_address("10.0.0.2", [b"garbage"], []) == "10.0.0.2"


def test_gate_is_fair_across_keys() -> None:
    g = ConcurrencyGate(1)
    assert g.try_acquire("busy", None)
    for i in range(5):
        g.enqueue("busy", None, f"busy{i}")
    g.enqueue("quiet", None, "quiet0")
    order = []
    holder = "busy"
    for _ in range(6):
        (w,) = g.release(holder)
        order.append(w)
        holder = w.rstrip("0123456789")
    assert order[:2] == ["busy0", "quiet0"]
    assert g.total == 1 and g.queued == 0


def test_gate_per_key_limit_and_queue_bound() -> None:
    g = ConcurrencyGate(None, max_queue=2)
    assert g.try_acquire("a", 1) and not g.try_acquire("a", 1) and g.try_acquire("b", 1)
    g.enqueue("a", 1, "a1")
    g.enqueue("a", 1, "a2")
    with pytest.raises(QueueFull):
        g.enqueue("b", 1, "b1")
    assert g.cancel("a", "a2") and not g.cancel("a", "zz")
    assert g.release("b") == []
    assert g.release("a") == ["a1"]


# --- usage -----------------------------------------------------------------------------

NDJSON_TAIL = (b'2f\r\n{"model":"llama3.2","response":" tok4","done":false}\n\r\n'
               b'c1\r\n{"model":"llama3.2","created_at":"x","response":"","done":true,"done_reason":"stop",'
               b'"total_duration":1234,"load_duration":1,"prompt_eval_count":26,"prompt_eval_duration":1,'
               b'"eval_count":290,"eval_duration":1}\n\r\n0\r\n\r\n')


def test_usage_from_ndjson_final_line_split_across_reads() -> None:
    parts = [NDJSON_TAIL[:70], NDJSON_TAIL[70:150], NDJSON_TAIL[150:]]
    assert usage_from_tail(join_tail(parts)) == {"model": "llama3.2", "prompt_tokens": 26, "completion_tokens": 290}


def test_usage_from_sse() -> None:
    tail = (b'data: {"id":"c","model":"qwen3:8b","choices":[],"usage":{"prompt_tokens":26,"completion_tokens":5,'
            b'"total_tokens":31}}\n\ndata: [DONE]\n\n')
    assert usage_from_tail(tail) == {"model": "qwen3:8b", "prompt_tokens": 26, "completion_tokens": 5}
    assert usage_from_tail(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n') == {}


def test_join_tail_copies_only_the_tail() -> None:
    assert join_tail([b"a" * 100000, None, b"bc"], limit=5) == b"aaabc"


def test_usage_report() -> None:
    lines = [
        '{"time":"2026-11-26T10:00:00Z","client":"1.1.1.1","status":200,"key":"app","model":"llama3.2","prompt_tokens":26,"completion_tokens":5}',
        '{"time":"2026-11-26T10:00:01Z","client":"1.1.1.1","status":200,"key":"app","model":"qwen3:8b","prompt_tokens":4,"completion_tokens":1}',
        '{"time":"2026-11-26T10:00:02Z","client":"1.1.1.1","status":429,"key":"app"}',
    ] + ['{"time":"2026-11-26T10:00:03Z","client":"6.6.6.6","status":401,"key":null}'] * 6 + [
        '{"time":"2026-11-20T10:00:00Z","client":"1.1.1.1","status":200,"key":"old","completion_tokens":9}', "junk"]
    from datetime import datetime, timezone
    now = datetime(2026, 11, 26, 12, tzinfo=timezone.utc).timestamp()
    out = summarise(lines, since=86400, by="key", now=now)
    rows = {l.split()[0]: l.split()[1:] for l in out.splitlines()[1:3]}
    assert rows["app"] == ["3", "30", "6", "1"] and rows["-"] == ["6", "0", "0", "6"]
    assert "old" not in out and "6.6.6.6  6" in out and "1 lines were not JSON" in out
    by_model = summarise(lines, since=None, by="model", now=now)
    assert "llama3.2" in by_model and "qwen3:8b" in by_model


def test_usage_when_context_array_separates_done_from_counts() -> None:
    line = (b'{"model":"llama3.2","response":"","done":true,"context":[' + b",".join(b"%d" % i for i in range(5000)) +
            b'],"total_duration":1,"prompt_eval_count":26,"eval_count":290,"eval_duration":1}\n')
    assert usage_from_tail(join_tail([line[:20000], line[20000:]])) == {"prompt_tokens": 26, "completion_tokens": 290}


def test_v1_model_retrieval_checked() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    policy.check_endpoint(key, b"/v1/models/qwen3:8b")
    with pytest.raises(Forbidden):
        policy.check_endpoint(key, b"/v1/models/mistral:7b")


def test_readme_policies_example_config_is_valid() -> None:
    import re
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", readme[readme.index("## Policies"):], re.S).group(1)
    c = load(block)
    assert [k.admin for k in c.keys] == [True, False] and c.limits.max_concurrent == 8 and c.ban.after_failures == 20


def test_decision_modules_never_import_asyncio() -> None:
    import subprocess
    import sys
    code = ("import sys, guardproxy.decisions.policy, guardproxy.decisions.routes, guardproxy.engine.tokens, guardproxy.decisions.limits, "
            "guardproxy.decisions.cors, guardproxy.decisions.auth; print('asyncio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


def test_model_limited_key_may_post_only_to_checked_endpoints() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    policy.check_endpoint(key, b"/api/chat", b"POST")
    policy.check_endpoint(key, b"/api/version", b"GET")
    with pytest.raises(Forbidden):
        policy.check_endpoint(key, b"/v1/messages", b"POST")
    policy.check_endpoint(KeyEntry("k", b""), b"/v1/messages", b"POST")


def test_ipv6_counts_by_slash_64() -> None:
    from guardproxy.decisions.limits import address_bucket
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("::ffff:192.0.2.7") == "192.0.2.7" and address_bucket("192.0.2.7") == "192.0.2.7"
