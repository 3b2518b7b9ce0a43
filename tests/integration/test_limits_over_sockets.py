"""Limits over real sockets: rates, bans, the fair queue, usage counts, and live reload."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import KEY, OTHER_KEY, Proxy
from guardproxy.config.load import load_config
from guardproxy.config.model import Ban, Rate, TrafficLimits as Limits
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from guardproxy.engine.reload import Reloader
from guardproxy.engine.server import GuardServer
from support.bodies import gen_body
from support.gates import open_stream
from support.polling import until
from support.raw_http import fetch
from support.policy_gate import APP, PHONE, ADMIN, KEYS, FakeClock, start, gp, stop  # noqa: F401 (gp: a fixture)


# --- rates and bans ---------------------------------------------------------------------

async def test_per_ip_rate_429_with_retry_after_under_fake_clock(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start(fake.port, tmp_path, limits=Limits(per_ip=Rate(2, 60.0)))
    clock = p.server.clock = FakeClock()
    try:
        assert [(await fetch(p.port, "GET", "/api/version", headers=PHONE)).status for _ in range(2)] == [200, 200]
        opened = fake.connections_opened
        r = await fetch(p.port, "GET", "/api/version", headers=PHONE)
        assert r.status == 429 and r.header("retry-after") == "30"
        assert json.loads(r.body) == {"error": "rate limit exceeded"}
        # The same address without a key is limited too (before any key check).
        assert (await fetch(p.port, "GET", "/api/version")).status == 429
        assert fake.connections_opened == opened
        clock.now += 30
        assert (await fetch(p.port, "GET", "/api/version", headers=PHONE)).status == 200
    finally:
        await stop(p)


async def test_per_key_rate(fake: FakeOllama, tmp_path: Path) -> None:
    keys = (replace(KEYS[0], rate=Rate(1, 10.0)), KEYS[1])
    p = await start(fake.port, tmp_path, keys=keys)
    p.server.clock = FakeClock()
    try:
        assert (await fetch(p.port, "GET", "/api/version", headers=APP)).status == 200
        r = await fetch(p.port, "GET", "/api/version", headers=APP)
        assert r.status == 429 and r.header("retry-after") == "10"
        assert (await fetch(p.port, "GET", "/api/version", headers=PHONE)).status == 200  # other key unaffected
    finally:
        await stop(p)


async def test_spoofed_x_forwarded_for_from_untrusted_peer_is_still_limited(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start(fake.port, tmp_path, limits=Limits(per_ip=Rate(2, 60.0)))
    p.server.clock = FakeClock()
    try:
        statuses = [(await fetch(p.port, "GET", "/api/version",
                                 headers={**PHONE, "X-Forwarded-For": f"198.51.100.{i}",
                                          "Forwarded": f"for=198.51.100.{i}"})).status for i in range(4)]
        assert statuses == [200, 200, 429, 429]
        assert {e["client"] for e in p.log_lines()} == {"127.0.0.1"}
    finally:
        await stop(p)


async def test_trusted_proxy_forwarded_address_is_believed(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start(fake.port, tmp_path, limits=Limits(per_ip=Rate(1, 60.0), trusted_proxies=("127.0.0.0/8",)))
    p.server.clock = FakeClock()
    try:
        statuses = [(await fetch(p.port, "GET", "/api/version",
                                 headers={**PHONE, "X-Forwarded-For": f"198.51.100.{i % 2}"})).status for i in range(3)]
        assert statuses == [200, 200, 429]
        assert fake.requests[0].header("x-forwarded-for") == "198.51.100.0"
        assert [e["client"] for e in p.log_lines()] == ["198.51.100.0", "198.51.100.1", "198.51.100.0"]
    finally:
        await stop(p)


async def test_ban_then_unban(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start(fake.port, tmp_path, ban=Ban(after_failures=3, window=600.0, duration=900.0))
    clock = p.server.clock = FakeClock()
    try:
        for _ in range(3):
            assert (await fetch(p.port, "GET", "/api/tags", headers={"X-API-Key": "gp_guess-" + "x" * 30})).status == 401
        r = await fetch(p.port, "GET", "/api/tags", headers=PHONE)  # even the right key: banned before the key check
        assert r.status == 429 and r.header("retry-after") == "900"
        assert fake.connections_opened == 0
        clock.now += 899
        assert (await fetch(p.port, "GET", "/api/tags", headers=PHONE)).status == 429
        clock.now += 1
        assert (await fetch(p.port, "GET", "/api/tags", headers=PHONE)).status == 200
    finally:
        await stop(p)


# --- concurrency -----------------------------------------------------------------------

async def test_queue_is_fair_across_keys_and_slot_freed_on_disconnect(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start(fake.port, tmp_path, limits=Limits(max_concurrent=1, queue_timeout=10.0))
    gate, queue = p.server.policies.gate, p.server.hosts.waiting   # slots in use; the one queue
    try:
        _, w1 = await open_stream(p.port, PHONE, gen_body("llama3.2", tokens=100000, delay=0.01))
        waiting = []
        for i, (who, model) in enumerate([(PHONE, "phone-2"), (PHONE, "phone-3"), (PHONE, "phone-4"), (ADMIN, "admin-1")]):
            waiting.append(asyncio.ensure_future(fetch(p.port, "POST", "/api/generate", gen_body(model, tokens=1), who)))
            await until(lambda n=i + 1: queue.queued == n)
        w1.transport.abort()  # the hang-up ends the stream and frees its slot
        results = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert all(r.status == 200 for r in results)
        order = [rec.json()["model"] for rec in fake.requests[1:]]
        # One busy key cannot starve the other: admin goes second, not last.
        assert order == ["phone-2", "admin-1", "phone-3", "phone-4"]
        assert gate.total == 0 and queue.queued == 0
    finally:
        await stop(p)


async def test_queue_timeout_is_503(fake: FakeOllama, tmp_path: Path) -> None:
    keys = (replace(KEYS[1], max_concurrent=1), KEYS[2])
    p = await start(fake.port, tmp_path, keys=keys, limits=Limits(queue_timeout=0.2))
    try:
        _, w1 = await open_stream(p.port, PHONE, gen_body("llama3.2", tokens=100000, delay=0.01))
        opened = fake.connections_opened
        r = await fetch(p.port, "POST", "/api/generate", gen_body("llama3.2", tokens=1), PHONE)
        assert r.status == 503 and r.header("retry-after") == "1"
        assert fake.connections_opened == opened
        # The per-key limit does not hold back another key.
        assert (await fetch(p.port, "POST", "/api/generate", gen_body("llama3.2", tokens=1), ADMIN)).status == 200
        w1.transport.abort()
        await until(lambda: p.server.policies.gate.total == 0)
        assert (await fetch(p.port, "POST", "/api/generate", gen_body("llama3.2", tokens=1), PHONE)).status == 200
    finally:
        await stop(p)


# --- usage ---------------------------------------------------------------------------------

async def test_token_counts_in_log_equal_upstream_eval_count(gp: Proxy, fake: FakeOllama) -> None:
    r = await fetch(gp.port, "POST", "/api/generate", gen_body("llama3.2", tokens=17), PHONE)
    final = json.loads(r.chunks[-1])
    chat = await fetch(gp.port, "POST", "/api/chat",
                       b'{"model":"qwen3:8b","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":9}}', APP)
    sse = await fetch(gp.port, "POST", "/v1/chat/completions",
                      b'{"model":"qwen3:8b","messages":[{"role":"user","content":"hi"}],"max_tokens":6,"stream":true,'
                      b'"stream_options":{"include_usage":true}}', PHONE)
    assert sse.status == 200 and chat.status == 200
    await fetch(gp.port, "GET", "/api/version", headers=PHONE)
    lines = gp.log_lines()
    assert (lines[0]["model"], lines[0]["prompt_tokens"], lines[0]["completion_tokens"]) == \
        ("llama3.2", final["prompt_eval_count"], final["eval_count"])
    assert final["eval_count"] == 17
    assert (lines[1]["model"], lines[1]["completion_tokens"]) == ("qwen3:8b", 9)
    assert (lines[2]["model"], lines[2]["prompt_tokens"], lines[2]["completion_tokens"]) == ("qwen3:8b", 26, 6)
    assert "completion_tokens" not in lines[3]


def test_usage_command_reads_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from guardproxy.cli import main
    log = tmp_path / "a.log"
    log.write_text('{"time":"2099-01-01T00:00:00Z","client":"1.2.3.4","status":200,"key":"k","model":"m",'
                   '"prompt_tokens":3,"completion_tokens":4}\n')
    assert main(["usage", "--log", str(log), "--since", "all", "--by", "model"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "requests", "prompt_tokens", "completion_tokens", "errors"]
    assert out[1].split() == ["m", "1", "3", "4", "0"]
    assert main(["usage", "--log", str(tmp_path / "none.log")]) == 2


# --- live reload ---------------------------------------------------------------------------

CONFIG = """\
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:{port}"
[log]
access = ""
{keys}
"""


def key_block(name: str, key: str) -> str:
    return f'[[keys]]\nname = "{name}"\nkey_sha256 = "{hash_key(key)}"\n'


async def test_reload_adds_and_revokes_a_key_while_a_stream_keeps_running(fake: FakeOllama, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "g.toml"
    path.write_text(CONFIG.format(port=fake.port, keys=key_block("a", KEY)))
    server = GuardServer(load_config(path))
    await server.start()
    reloader = Reloader(server, path)
    try:
        reader, writer = await open_stream(server.port, APP, gen_body("llama3.2", tokens=60, delay=0.01))
        assert (await fetch(server.port, "GET", "/api/version", headers=PHONE)).status == 401
        path.write_text(CONFIG.format(port=fake.port, keys=key_block("b", OTHER_KEY)))
        assert reloader.reload()
        assert (await fetch(server.port, "GET", "/api/version", headers=PHONE)).status == 200
        assert (await fetch(server.port, "GET", "/api/version", headers=APP)).status == 401
        # The stream that started under the old key runs to its end.
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
        assert b'"done":true' in rest and b'"eval_count":60' in rest
        writer.close()
        # A broken edit is refused with one line; the previous config keeps running.
        broken = CONFIG.format(port=fake.port, keys=key_block("b", OTHER_KEY)) + "[limits]\nper_ip = \"fast\"\n"
        path.write_text(broken)
        assert not reloader.reload("SIGHUP")
        line = caplog.records[-1].getMessage()
        assert "config not reloaded" in line and f"{path}:{broken.count(chr(10))}: limits.per_ip: expected" in line
        assert (await fetch(server.port, "GET", "/api/version", headers=PHONE)).status == 200
    finally:
        await server.stop(grace=0)


async def test_reload_by_file_watch_and_sighup(fake: FakeOllama, tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(CONFIG.format(port=fake.port, keys=key_block("a", KEY)))
    server = GuardServer(load_config(path))
    await server.start()
    reloader = Reloader(server, path)
    watch = asyncio.ensure_future(reloader.watch(interval=0.02))
    try:
        path.write_text(CONFIG.format(port=fake.port, keys=key_block("a", KEY) + key_block("b", OTHER_KEY)))
        await until(lambda: reloader.reloads == 1)
        assert (await fetch(server.port, "GET", "/api/version", headers=PHONE)).status == 200
        if sys.platform != "win32" and reloader.install_sighup(asyncio.get_running_loop()):
            try:
                os.kill(os.getpid(), signal.SIGHUP)
                await until(lambda: reloader.reloads == 2)
            finally:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    finally:
        watch.cancel()
        await server.stop(grace=0)
