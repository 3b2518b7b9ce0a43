"""Several Ollama hosts: failover before the first byte only, health, readiness, reloads.

Fake hosts on 127.0.0.2, .3 and .4; the gate checks them every 0.1 s.  The timing of the breaker and
of health checks, and failover after each kind of failure, are checked to the second on a virtual
clock in tests/unit/engine/test_virtual_hosts.py and test_virtual_forwarding.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path


from conftest import KEY
from support.hosts import Fakes, Held, fakes, gate, generate, host, models_asked, work  # noqa: F401 (fakes: a fixture)
from support.polling import until
from support.raw_http import fetch


async def test_a_host_that_answers_503_at_once_is_failed_over_and_then_left_alone(fakes: Fakes,
                                                                                  tmp_path: Path) -> None:
    busy = await fakes.start(0, models=["m"], loaded=["m"], busy=True)  # warm: chosen first
    ok = await fakes.start(1, models=["m"])
    async with gate(tmp_path, (host(0, busy), host(1, ok))) as proxy:
        for _ in range(5):
            resp = await generate(proxy.port, "m", KEY)
            assert resp.status == 200 and json.loads(resp.body)["done"] is True
        # Its breaker (1 s) keeps the host that failed fast from winning least-busy (olla#144).
        assert len(work(busy)) == 1 and len(work(ok)) == 5
        assert not proxy.server.hosts.members["gpu-a"].host.available(proxy.server.hosts.clock())
        lines = proxy.log_lines()
    assert [line["upstream"] for line in lines] == ["gpu-b"] * 5 and {line["status"] for line in lines} == {200}


async def test_a_request_failed_over_reaches_each_host_with_its_own_host_field_and_every_other_field(
        fakes: Fakes, tmp_path: Path) -> None:
    # The upstream head is built once; for the next host only its Host line changes.
    busy = await fakes.start(0, models=["m"], loaded=["m"], busy=True)  # warm: chosen first
    ok = await fakes.start(1, models=["m"])
    async with gate(tmp_path, (host(0, busy), host(1, ok))) as proxy:
        resp = await generate(proxy.port, "m", KEY)
        assert resp.status == 200
    (first,), (second,) = work(busy), work(ok)
    assert first.header("host") == f"{busy.host}:{busy.port}" and second.header("host") == f"{ok.host}:{ok.port}"
    assert [(k.lower(), v) for k, v in first.headers if k.lower() != "host"] == \
        [(k.lower(), v) for k, v in second.headers if k.lower() != "host"]
    assert second.header("x-forwarded-for") == "127.0.0.1" and second.header("x-request-id")


async def test_at_most_max_attempts_hosts_and_the_last_answer_is_ollamas_own(fakes: Fakes, tmp_path: Path) -> None:
    busy = [await fakes.start(i, models=["m"], busy=True) for i in range(3)]
    async with gate(tmp_path, tuple(host(i, f) for i, f in enumerate(busy))) as proxy:
        resp = await generate(proxy.port, "m", KEY)
    assert resp.status == 503
    assert json.loads(resp.body)["error"].startswith("server busy, please try again")
    assert sorted(len(work(f)) for f in busy) == [0, 1, 1]  # [routing] max_attempts = 2


async def test_a_404_from_a_host_whose_list_held_the_model_goes_elsewhere_and_refreshes_the_list(
        fakes: Fakes, tmp_path: Path) -> None:
    stale = await fakes.start(0, models=["m"], loaded=["m"])
    fresh = await fakes.start(1, models=["m"])
    async with gate(tmp_path, (host(0, stale), host(1, fresh)), interval=5.0) as proxy:
        stale.models = {"other:latest"}  # the model was deleted there since its /api/tags
        tags_before = [r.target for r in stale.requests].count("/api/tags")
        resp = await generate(proxy.port, "m", KEY)
        assert resp.status == 200
        assert models_asked(stale) == ["m"] and models_asked(fresh) == ["m"]
        # The list is dropped at once and fetched again at the next chance (a listing here).
        assert not proxy.server.hosts.members["gpu-a"].host.lists("m:latest")
        await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": KEY})
        assert [r.target for r in stale.requests].count("/api/tags") == tags_before + 1


async def test_a_stream_cut_mid_way_is_not_retried(fakes: Fakes, tmp_path: Path) -> None:
    a = await fakes.start(0, models=["m"], loaded=["m"])
    b = await fakes.start(1, models=["m"])
    async with gate(tmp_path, (host(0, a), host(1, b)), interval=5.0) as proxy:
        stream = await Held.open(proxy.port, "m", KEY, tokens=200, delay=0.01)
        assert stream.head.status == 200
        await asyncio.wait_for(stream.reader.readuntil(b"tok2"), 10)
        await a.close()  # the host dies mid-stream
        rest = await stream.rest()
        assert not rest.endswith(b"0\r\n\r\n")  # truncated: the client can tell
        stream.close()
        assert work(b) == []
        lines = proxy.log_lines()
    assert lines[-1]["upstream"] == "gpu-a" and lines[-1]["outcome"] == "upstream_error"


async def test_ready_counts_the_hosts_that_are_up(fakes: Fakes, tmp_path: Path) -> None:
    a, b = await fakes.start(0), await fakes.start(1)
    async with gate(tmp_path, (host(0, a), host(1, b))) as proxy:
        resp = await fetch(proxy.port, "GET", "/ready")
        assert (resp.status, resp.body) == (200, b'{"upstreams_up":2}')
        head = await fetch(proxy.port, "HEAD", "/ready")
        assert head.status == 200 and head.body == b""
        await a.close()
        await b.close()
        await until(lambda: proxy.server.hosts.up_count() == 0)
        resp = await fetch(proxy.port, "GET", "/ready")
        assert (resp.status, resp.body) == (503, b'{"upstreams_up":0}')
        # No host up: a listing is a 503 too, not an empty list.
        assert (await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": KEY})).status == 503


async def test_a_reload_adds_and_removes_hosts_while_streams_run(fakes: Fakes, tmp_path: Path) -> None:
    a = await fakes.start(0, models=["m"])
    b = await fakes.start(1, models=["m"])
    c = await fakes.start(2, models=["m"])
    async with gate(tmp_path, (host(0, a), host(1, b))) as proxy:
        server = proxy.server
        streams = [await Held.open(proxy.port, "m", KEY, tokens=30, delay=0.01) for _ in range(2)]
        assert len(work(a)) == 1 and len(work(b)) == 1
        server.apply_config(replace(server.config, upstreams=(host(1, b), host(2, c))))
        assert [m.name for m in server.hosts.members.values()] == ["gpu-b", "gpu-c"]
        for s in streams:  # both run to their end, the one on the removed host too
            rest = await s.rest()
            assert rest.endswith(b"0\r\n\r\n") and rest.count(b'"done":false') >= 29
            s.close()
        for _ in range(4):
            assert (await generate(proxy.port, "m", KEY)).status == 200
        assert len(work(a)) == 1 and len(work(c)) >= 1
        await until(lambda: a.open_connections == 0)  # the removed host's pool let go
        assert (await fetch(proxy.port, "GET", "/ready")).body == b'{"upstreams_up":2}'
