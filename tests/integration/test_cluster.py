"""Several gates, one set of limits: three guardproxy instances share a real redis-server.

Rates, bans, max_concurrent and token budgets hold exactly across the instances; a slot freed
on one instance wakes a request waiting on another (pub/sub, well before the poll).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path


from conftest import ADMIN_KEY, KEY, OTHER_KEY
from guardproxy.config.model import Ban, Rate, TrafficLimits
from guardproxy.config.values import parse_budget
from guardproxy.ops.budgets import budget_report
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.gates import Gate, gates, keys, open_stream
from support.hosts import Fakes, fakes, host  # noqa: F401 (fakes: a fixture)
from support.polling import until
from support.raw_http import RawResponse, fetch
from support.redis_server import RedisServer, redis  # noqa: F401 (redis: a fixture)

LAPTOP, PHONE, OWNER = {"X-API-Key": KEY}, {"X-API-Key": OTHER_KEY}, {"X-API-Key": ADMIN_KEY}


def shared_only(gs: list[Gate]) -> None:
    """Every decision so far was Redis's (a fallback could pass a test on its own)."""
    assert [(g.state.errors, g.state.fallbacks) for g in gs] == [(0, 0)] * len(gs)


async def test_rates_and_bans_hold_exactly_across_instances(fake: FakeOllama, tmp_path: Path,
                                                            redis: RedisServer) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 3, keys=keys(rate=Rate(7, 60.0)),
                     limits=TrafficLimits(per_ip=Rate(30, 60.0)),
                     ban=Ban(after_failures=3, window=60.0, duration=600.0)) as gs:
        statuses = [(await fetch(gs[i % 3].port, "GET", "/api/version", headers=LAPTOP)).status for i in range(10)]
        assert statuses == [200] * 7 + [429] * 3
        r = await fetch(gs[0].port, "GET", "/api/version", headers=LAPTOP)
        assert json.loads(r.body) == {"error": "rate limit exceeded for this key"}
        assert 8 <= int(r.header("retry-after") or 0) <= 9   # one request every 60/7 s
        # The address has spent 11 of its 30: 19 more anywhere, then 429 everywhere.
        statuses = [(await fetch(gs[i % 3].port, "GET", "/api/version", headers=PHONE)).status for i in range(20)]
        assert statuses == [200] * 19 + [429]
        shared_only(gs)

    await redis.command("FLUSHALL")
    async with gates(fake.port, tmp_path, redis.url(), 3, ban=Ban(after_failures=3, window=60.0, duration=600.0)) as gs:
        wrong = {"X-API-Key": "gp_guess-" + "x" * 30}
        forwarded = len(fake.requests)
        assert [(await fetch(g.port, "GET", "/api/tags", headers=wrong)).status for g in gs] == [401] * 3
        for g in gs:   # banned everywhere, the right key too, and nothing reached Ollama
            r = await fetch(g.port, "GET", "/api/tags", headers=PHONE)
            assert r.status == 429 and 599 <= int(r.header("retry-after") or 0) <= 600
        assert len(fake.requests) == forwarded
        # A ban learned from Redis is remembered: the next refusal costs no round trip.
        assert (await fetch(gs[0].port, "GET", "/api/tags", headers=PHONE)).status == 429
        shared_only(gs)


async def test_max_concurrent_holds_across_instances(fake: FakeOllama, tmp_path: Path, redis: RedisServer) -> None:
    # A long lease_ttl polls once a second: a wake-up well before that came by pub/sub.
    async with gates(fake.port, tmp_path, redis.url(), 3, lease_ttl=30.0, keys=keys(max_concurrent=2),
                     limits=TrafficLimits(queue_timeout=10.0)) as gs:
        def running() -> int:
            """The laptop key's slots, held over the three gates."""
            return sum(g.state.occupancy.running.get("laptop", 0) for g in gs)

        streams = [await open_stream(gs[i].port, LAPTOP, gen_body(tokens=100000, delay=0.01)) for i in range(2)]
        assert running() == 2
        waiting = asyncio.ensure_future(fetch(gs[2].port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP))
        await until(lambda: gs[2].state.slots.queue.queued == 1)
        # Another key is not held back by this one's limit.
        assert (await fetch(gs[2].port, "POST", "/api/generate", gen_body(tokens=2), PHONE)).status == 200
        # Until a slot frees, the third generation has neither run (it would hold a third slot or be
        # answered already) nor left the queue.
        assert running() == 2 and not waiting.done() and gs[2].state.slots.queue.queued == 1
        streams[0][1].transport.abort()   # the hang-up ends the stream and frees its slot
        t0 = time.monotonic()
        r = await asyncio.wait_for(waiting, 10)
        assert r.status == 200 and time.monotonic() - t0 < 0.8   # the poll would come after 1 s
        assert gs[2].state.slots.freed >= 1
        streams[1][1].transport.abort()
        await until(lambda: all(g.state.occupancy.total == 0 for g in gs))
        await until(lambda: zcard(redis, "t:slots:all", 0))
        shared_only(gs)


async def test_token_budget_holds_across_instances(fake: FakeOllama, tmp_path: Path, redis: RedisServer) -> None:
    # A generation reserves its cap (num_predict 20) and its body's bytes / 4 (22): 42 tokens.
    async with gates(fake.port, tmp_path, redis.url(), 3, keys=keys(tokens=parse_budget("100/h"))) as gs:
        r = await fetch(gs[0].port, "POST", "/api/generate", gen_body(tokens=20), LAPTOP)   # 26 prompt + 20 tokens
        assert r.status == 200
        # 46 + 42 fit in 100; it spends 46 too: its prompt ran 4 over its estimate, the overshoot allowed.
        r = await fetch(gs[1].port, "POST", "/api/generate", gen_body(tokens=20), LAPTOP)
        assert r.status == 200
        for g in gs:   # FINISH is not awaited: it lands within a round trip
            refused = await until(lambda g=g: refusal(g.port))   # type: ignore[misc]
            assert json.loads(refused.body) == {"error": "token budget exceeded"}
            assert 3540 <= int(refused.header("retry-after") or 0) <= 3600
        # Not a generation: nothing to spend.  Another key: its own budget (none).
        assert (await fetch(gs[2].port, "GET", "/api/tags", headers=LAPTOP)).status == 200
        assert (await fetch(gs[2].port, "POST", "/api/generate", gen_body(tokens=1), PHONE)).status == 200
        total = await redis.command("HVALS", "t:tokens:h:laptop")
        assert isinstance(total, list) and sum(int(v) for v in total) == 92
        # `usage` reads the budgets where the gates keep them.
        report = await asyncio.to_thread(budget_report, gs[0].server.config)
        row = next(line.split() for line in report.splitlines() if line.startswith("laptop"))
        assert row == ["laptop", "100/h", "92", "8", "-"]   # (not at its budget: no reset time)
        shared_only(gs)


async def refusal(port: int) -> RawResponse | None:
    r = await fetch(port, "POST", "/api/generate", gen_body(tokens=1), LAPTOP)
    return r if r.status == 429 else None


async def zcard(redis: RedisServer, key: str, n: int) -> bool:
    return await redis.command("ZCARD", key) == n


async def test_a_hosts_max_concurrent_holds_across_instances(fakes: Fakes, tmp_path: Path, redis: RedisServer) -> None:
    """[[upstreams]] max_concurrent is a shared lease: a generation sent through another gate to a
    host that is full waits for it, and goes on as soon as the host frees."""
    a = await fakes.start(0, models=["llama3.2"])
    b = await fakes.start(1, models=["llama3.2"])
    hosts = (host(0, a, max_concurrent=1), host(1, b, max_concurrent=1))
    async with gates(a.port, tmp_path, redis.url(), 2, lease_ttl=30.0, upstreams=hosts,
                     limits=TrafficLimits(queue_timeout=10.0)) as gs:
        to_a = {**OWNER, "X-Guardproxy-Upstream": "gpu-a"}
        _, writer = await open_stream(gs[0].port, to_a, gen_body(tokens=100000, delay=0.01))
        assert await redis.command("ZCARD", "t:slots:host:gpu-a") == 1
        waiting = asyncio.ensure_future(fetch(gs[1].port, "POST", "/api/generate", gen_body(tokens=2), to_a))
        await until(lambda: gs[1].state.slots.queue.queued == 1)
        # The other host is not held back, on either gate.
        assert (await fetch(gs[1].port, "POST", "/api/generate", gen_body(tokens=2),
                            {**OWNER, "X-Guardproxy-Upstream": "gpu-b"})).status == 200
        assert not waiting.done()
        writer.transport.abort()
        r = await asyncio.wait_for(waiting, 10)
        assert r.status == 200 and b'"done":true' in r.body
        await until(lambda: all(g.state.occupancy.total == 0 for g in gs))
        await until(lambda: zcard(redis, "t:slots:host:gpu-a", 0))
        assert [m.host.in_flight for g in gs for m in g.server.hosts.members.values()] == [0, 0, 0, 0]
        shared_only(gs)
