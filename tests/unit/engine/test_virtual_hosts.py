"""The host set on a clock that jumps (support/virtual_gate.py): the breaker's time out, doubling and
half-open try, Retry-After while no host may be tried, and health checks taking a host down and up
round by round.  test_hosts_faults.py keeps a failover and a killed host end to end."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from conftest import make_config
from guardproxy.config.model import Routing, TrafficLimits, Upstream, UpstreamHost
from support.virtual import response, settle
from support.virtual_gate import GENERATE, LAPTOP, Gate, final_line, run

A, B = ("127.0.0.2", 11434), ("127.0.0.3", 11434)
BUSY = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'


def hosts_config(*names: str, interval: float = 3600.0, **overrides: Any) -> Any:
    addresses = {"gpu-a": A, "gpu-b": B}
    return make_config(11434, upstreams=tuple(UpstreamHost(n, Upstream(*addresses[n]), max_concurrent=4)
                                              for n in names),
                       routing=Routing(health_interval=interval), **overrides)


async def generate(g: Gate, answers: dict[str, bytes]) -> tuple[list[str], int, dict[str, str]]:
    """One generation; each host it reaches answers from `answers` by its name.  The hosts it reached,
    in order, and the client's status and headers."""
    client = g.send("POST", "/api/generate", GENERATE, LAPTOP)
    tried: list[str] = []
    while True:
        await settle()
        pending = [(name, h.pending) for name, h in g.hosts.items() if h.pending]
        if not pending:
            break
        name, (sent,) = pending[0]
        tried.append(name)
        sent.reply(answers[name])
    status, fields, _ = await g.response(client)
    return tried, status, fields


def test_the_breaker_keeps_a_failing_host_out_for_1_then_2_s_and_a_success_closes_it() -> None:
    async def scenario() -> None:
        g = Gate(hosts_config("gpu-a", "gpu-b"))
        g.hosts["gpu-a"].loaded = ("llama3.2:latest",)   # warm: the first choice whenever it may be tried
        await g.server.health.next_round()
        busy, fine = response(503, BUSY, "Service Unavailable"), final_line(1, 1)
        t0 = g.loop.time()
        assert (await generate(g, {"gpu-a": busy, "gpu-b": fine}))[:2] == (["gpu-a", "gpu-b"], 200)
        await g.until_time(t0 + 0.9)
        assert (await generate(g, {"gpu-b": fine}))[0] == ["gpu-b"]   # out for 1 s
        await g.until_time(t0 + 1.0)
        t1 = g.loop.time()
        # The half-open try fails: out for twice as long.
        assert (await generate(g, {"gpu-a": busy, "gpu-b": fine}))[0] == ["gpu-a", "gpu-b"]
        await g.until_time(t1 + 1.9)
        assert (await generate(g, {"gpu-b": fine}))[0] == ["gpu-b"]
        await g.until_time(t1 + 2.0)
        assert (await generate(g, {"gpu-a": fine}))[0] == ["gpu-a"]   # it answered: the breaker closes
        t2 = g.loop.time()
        assert (await generate(g, {"gpu-a": busy, "gpu-b": fine}))[0] == ["gpu-a", "gpu-b"]
        await g.until_time(t2 + 1.0)   # and the back-off starts again from 1 s, not 4
        assert (await generate(g, {"gpu-a": fine}))[0] == ["gpu-a"]
        await g.stop()
    run(scenario)


def test_with_every_host_out_the_answer_says_when_the_nearest_breaker_closes() -> None:
    async def scenario() -> None:
        g = Gate(hosts_config("gpu-a"))
        await g.server.health.next_round()
        busy = response(503, BUSY, "Service Unavailable")
        t0 = g.loop.time()
        assert (await generate(g, {"gpu-a": busy}))[:2] == (["gpu-a"], 503)   # the host's own answer
        await g.until_time(t0 + 0.5)
        tried, status, fields = await generate(g, {})
        assert (tried, status, fields["Retry-After"]) == ([], 503, "1")
        await g.until_time(t0 + 1.0)
        t1 = g.loop.time()
        assert (await generate(g, {"gpu-a": busy}))[:2] == (["gpu-a"], 503)   # out for 2 s now
        await g.until_time(t1 + 0.5)
        assert (await generate(g, {}))[2]["Retry-After"] == "2"   # 1.5 s left, rounded up
        await g.until_time(t1 + 1.5)
        assert (await generate(g, {}))[2]["Retry-After"] == "1"
        await g.until_time(t1 + 2.0)
        assert (await generate(g, {"gpu-a": final_line(1, 1)}))[:2] == (["gpu-a"], 200)
        await g.stop()
    run(scenario)


def test_health_checks_take_a_host_down_after_three_failed_rounds_and_up_after_two_good(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="guardproxy")

    async def scenario() -> None:
        g = Gate(hosts_config("gpu-a", "gpu-b", interval=10.0))
        a = g.hosts["gpu-a"]
        await g.server.health.next_round()
        t0 = g.loop.time()   # rounds at t0 + 10, + 20, ...
        a.healthy = False
        await g.until_time(t0 + 29.9)   # two failed rounds
        assert g.server.hosts.up_count() == 2
        await g.until_time(t0 + 30.0)
        await settle()
        assert g.server.hosts.up_count() == 1   # the third
        status, _, body = await g.response(g.send("GET", "/ready"))
        assert (status, json.loads(body)) == (200, {"upstreams_up": 1})
        assert (await generate(g, {"gpu-b": final_line(1, 1)}))[:2] == (["gpu-b"], 200)   # not to the down host
        await g.until_time(t0 + 35.0)
        a.healthy = True
        await g.until_time(t0 + 49.9)   # one good round
        assert g.server.hosts.up_count() == 1
        await g.until_time(t0 + 50.0)
        await settle()
        assert g.server.hosts.up_count() == 2   # the second
        await g.until_time(t0 + 100.0)   # more good rounds: nothing more is said
        await g.stop()
    run(scenario)
    said = [r.getMessage() for r in caplog.records if "gpu-a" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith('upstream "gpu-a" (http://127.0.0.2:11434) is down: its health checks failed')
    assert said[1] == 'upstream "gpu-a" (http://127.0.0.2:11434) is up again (2 of 2 hosts up)'


def test_a_single_upstream_down_by_its_checks_is_still_tried_and_ready_says_503() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, routing=Routing(health_interval=10.0)))
        await g.server.health.next_round()
        assert [s.target for s in g.host.requests] == [b"/", b"/api/ps", b"/api/tags"]
        assert (await g.response(g.send("GET", "/ready")))[:3:2] == (200, b'{"upstreams_up":1}')
        g.host.refuse = True
        for t in g.host.connections:
            t.hang_up()
        await g.server.health.next_round()
        assert (await g.response(g.send("GET", "/ready")))[:3:2] == (503, b'{"upstreams_up":0}')
        # One host: it is always tried, down or not (there is nowhere else): 502 as ever.
        assert (await g.response(g.send("POST", "/api/generate", GENERATE, LAPTOP)))[0] == 502
        await g.stop()
    run(scenario)


def test_a_host_that_does_not_answer_its_check_fails_it_at_the_check_timeout() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, routing=Routing(health_interval=10.0)))
        await g.server.health.next_round()
        g.host.answer = None   # it accepts, reads, and never answers
        rounds = g.server.health.rounds
        t0 = g.loop.time()
        await g.server.health.next_round(3)
        # three rounds: 10 s apart, each over when its check's 5 s ran out
        assert g.server.health.rounds == rounds + 3 and g.loop.time() - t0 == pytest.approx(3 * 10.0 + 3 * 5.0)
        assert g.server.hosts.up_count() == 0
        await g.stop()
    run(scenario)


def test_a_generation_waits_for_a_host_queue_timeout_and_gets_503() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, limits=TrafficLimits(queue_timeout=30.0),
                             upstreams=(UpstreamHost("gpu-a", Upstream(*A), max_concurrent=1),)))
        holder = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        t0 = g.loop.time()
        waiting = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await g.until_time(t0 + 29.9)
        assert g.waiting() == 1 and not waiting.written
        status, fields, body = await g.response(waiting)
        assert (status, fields["Retry-After"]) == (503, "1") and 30.0 <= g.loop.time() - t0 <= 30.1
        assert "busy" in json.loads(body)["error"] and g.waiting() == 0
        assert len(g.hosts["gpu-a"].work) == 1
        g.hosts["gpu-a"].work[0].reply(final_line(1, 1))
        assert (await g.response(holder))[0] == 200
        await g.stop()
    run(scenario)


def test_a_refused_host_is_back_after_two_good_checks_once_its_breaker_has_closed() -> None:
    async def scenario() -> None:
        g = Gate(hosts_config("gpu-a", "gpu-b", interval=0.4))
        a = g.hosts["gpu-a"]
        a.loaded = ("llama3.2:latest",)
        await g.server.health.next_round()
        a.refuse = True   # killed
        for t in a.connections:
            t.hang_up()
        await settle()
        t0 = g.loop.time()
        assert (await generate(g, {"gpu-b": final_line(1, 1)}))[:2] == (["gpu-b"], 200)   # refused: gpu-b answers
        assert g.server.hosts.up_count() == 1
        a.refuse = False   # restarted at once
        await g.server.health.next_round(2)
        assert g.server.hosts.up_count() == 2 and g.loop.time() - t0 < 1.0   # up by its checks ...
        assert (await generate(g, {"gpu-b": final_line(1, 1)}))[0] == ["gpu-b"]   # ... its breaker still open
        await g.until_time(t0 + 1.0)
        assert (await generate(g, {"gpu-a": final_line(1, 1)}))[0] == ["gpu-a"]   # warm: first choice again
        await g.stop()
    run(scenario)


DEEP = b'{"models":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
MANY = b'{"models":[' + b",".join(b'{"name":"m%06d:latest","model":"m%06d:latest","size":1,"x":1}' % (i, i)
                                  for i in range(110_000)) + b"]}"   # 7 MB, under the 8 MiB cap


@pytest.mark.parametrize("which", ["both", "tags"])
@pytest.mark.parametrize("bad", [DEEP, MANY, b'{"models":[{"name":"a"}', b"<html>"], ids=["deep", "many", "cut", "html"])
def test_one_host_with_an_unreadable_list_stays_down_and_breaks_no_merged_listing(
        caplog: pytest.LogCaptureFixture, bad: bytes, which: str) -> None:
    caplog.set_level(logging.INFO, logger="guardproxy")

    async def scenario() -> None:
        g = Gate(hosts_config("gpu-a", "gpu-b", interval=10.0))
        good, evil = g.hosts["gpu-a"], g.hosts["gpu-b"]
        good.loaded = ("llama3.2:latest",)
        evil.models = evil.loaded = ("qwen3:latest",)
        evil.tags_body = bad
        if which == "both":
            evil.ps_body = bad
        await g.server.health.next_round(3)
        for _ in range(4):   # down, and it stays down
            await g.server.health.next_round()
            assert g.server.hosts.up_count() == 1
        status, _, body = await g.response(g.send("GET", "/ready"))
        assert (status, json.loads(body)) == (200, {"upstreams_up": 1})
        status, _, body = await g.response(g.send("GET", "/api/tags", None, LAPTOP))
        assert status == 200 and [m["name"] for m in json.loads(body)["models"]] == ["llama3.2:latest"]
        status, _, body = await g.response(g.send("GET", "/api/ps", None, LAPTOP))
        assert status == 200
        assert [(m["name"], m["upstream"]) for m in json.loads(body)["models"]] == [("llama3.2:latest", "gpu-a")]
        await g.stop()
    run(scenario)
    lines = [r for r in caplog.records if "gpu-b" in r.getMessage() and "cannot read" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]   # one line, not one per round
    assert not any(r.exc_info for r in caplog.records)                   # and no traceback anywhere
