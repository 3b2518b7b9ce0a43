"""`guardproxy check` against a real guardproxy and the fake Ollama on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pathlib import Path

from conftest import ADMIN_KEY, KEY, Proxy, start_proxy
from guardproxy.config.model import Upstream, UpstreamHost
from guardproxy import cli
from guardproxy.ops.check import run_checks
from guardproxy.testing.fake_ollama import FakeOllama


async def test_every_check_passes_against_a_healthy_gate(proxy: Proxy, fake: FakeOllama) -> None:
    results = await asyncio.to_thread(run_checks, proxy.url, KEY, model="llama3.2")
    assert [r.ok for r in results] == [True] * 6, results
    assert results[1].detail == "200, 1 upstream host up"
    assert results[4].detail == "200, 3 models"
    assert results[5].detail.startswith("24 tokens, first after")
    generate = [r for r in fake.requests if r.target == "/api/generate"]
    assert len(generate) == 1  # only the key's requests reached Ollama
    assert sum(r.target == "/api/tags" for r in fake.requests) == 1


async def test_a_wrong_key_fails_the_key_check_and_the_generation(proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(cli.main, ["check", proxy.url, "--key", "gp_not-the-key-0000000000000000000",
                                              "--model", "llama3.2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "GET /api/tags with the key -> 200      FAIL  got 401, expected 200: unauthorized" in out
    assert "streamed generation (llama3.2)         FAIL  got 401: unauthorized" in out
    assert out.rstrip().endswith("4 passed, 2 failed")


async def test_the_cli_exit_code_is_zero_when_all_pass(proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(cli.main, ["check", proxy.url, "--key", KEY]) == 0
    assert "5 passed, 0 failed" in capsys.readouterr().out


async def test_an_ungated_ollama_fails_the_checklist(fake: FakeOllama) -> None:
    # Pointed straight at Ollama: no /health, and no key is needed.
    results = await asyncio.to_thread(run_checks, fake.url, KEY)
    assert [r.ok for r in results] == [False, False, False, False, True]
    assert results[2].detail == "got 200, expected 401"


async def test_a_preflight_row_reports_what_the_gate_answered(proxy: Proxy) -> None:
    results = await asyncio.to_thread(run_checks, proxy.url, KEY, origin="https://app.example.com")
    row = results[-1]
    assert row.name == "CORS preflight from https://app.example.com"
    # Whatever the gate's CORS settings, the row must agree with its answer.
    assert row.ok == row.detail.endswith("origin allowed")


async def test_a_gate_that_is_down_fails_every_check() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        results = await asyncio.to_thread(run_checks, f"http://127.0.0.1:{port}", KEY, timeout=5)
    assert [r.ok for r in results] == [False] * 5
    assert all(r.detail.startswith("connection refused") for r in results)


async def test_a_bad_url_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(cli.main, ["check", "ftp://x", "--key", KEY]) == 2
    assert capsys.readouterr().err == "guardproxy check: ftp://x: expected an http:// or https:// URL\n"


async def test_each_named_upstream_host_is_checked_through_the_gate(tmp_path: Path) -> None:
    a = await FakeOllama.start("127.0.0.2", models=["llama3.2"])
    b = await FakeOllama.start("127.0.0.3", models=["qwen3:8b", "mistral:7b"])
    hosts = (UpstreamHost("gpu-a", Upstream(a.host, a.port), 2), UpstreamHost("gpu-b", Upstream(b.host, b.port), 2))
    proxy = await start_proxy(a.port, tmp_path, upstreams=hosts)
    try:
        await b.close()
        results = await asyncio.to_thread(run_checks, proxy.url, ADMIN_KEY, upstreams=["gpu-a", "gpu-b", "gpu-z"])
        plain = await asyncio.to_thread(run_checks, proxy.url, KEY, upstreams=["gpu-a"])
    finally:
        await proxy.server.stop(grace=0)
        await a.close()
    rows = {r.name: (r.ok, r.detail) for r in results[-3:]}
    assert rows == {"upstream gpu-a: version and models": (True, "Ollama 0.12.0, 1 model"),
                    "upstream gpu-b: version and models": (False, "got 502: upstream unavailable"),
                    "upstream gpu-z: version and models":
                        (False, "got 400: X-Guardproxy-Upstream names no configured upstream")}
    assert plain[-1].detail == "got 403: only admin keys may choose an upstream (X-Guardproxy-Upstream)"
