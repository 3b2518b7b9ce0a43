"""A sick Redis is an unavailable Redis: out of memory (maxmemory 1, noeviction), it is not trusted.

Redis checks memory for a script without flags only until the script's first write, so an
admission that began by purging expired leases went on and handed out a slot the limit forbids,
while renewals failed and running streams' leases ran out.  And tokens counted while writes failed
waited for a reconnect that never came.  Now every script declares its flags (Redis refuses it
whole), an error reply puts the gate into its on_redis_error mode, and the first renewal that
succeeds sends back the leases, tokens and releases kept meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from conftest import KEY
from guardproxy.config.model import TrafficLimits
from guardproxy.config.redis_url import RedisAddress
from guardproxy.config.values import parse_budget
from guardproxy.engine.state.commands import Script
from guardproxy.engine.state.resp import RedisClient, RedisReplyError
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.gates import gates, keys, open_stream
from support.polling import until
from support.raw_http import fetch
from support.redis_server import RedisServer, redis  # noqa: F401 (redis: a fixture)

LAPTOP = {"X-API-Key": KEY}


@pytest.fixture
async def no_memory(redis: RedisServer) -> AsyncIterator[RedisServer]:
    await redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    yield redis
    await recover(redis)


async def out_of_memory(redis: RedisServer) -> None:
    assert await redis.command("CONFIG", "SET", "maxmemory", "1") == b"OK"


async def recover(redis: RedisServer) -> None:
    assert await redis.command("CONFIG", "SET", "maxmemory", "0") == b"OK"


async def live_leases(redis: RedisServer, key: str) -> int:
    """Members of a lease set that have not expired, on Redis's clock."""
    t = await redis.command("TIME")
    assert isinstance(t, list)
    now_ms = int(t[0]) * 1000 + int(t[1]) // 1000
    n = await redis.command("ZCOUNT", key, f"({now_ms}", "+inf")
    assert isinstance(n, int)
    return n


async def leases_are(redis: RedisServer, n: int) -> bool:
    return await live_leases(redis, "t:slots:key:laptop") == n


async def tokens_are(redis: RedisServer, n: int) -> bool:
    return await tokens_in_redis(redis, "t:tokens:h:laptop") == n


async def tokens_in_redis(redis: RedisServer, key: str) -> int:
    values = await redis.command("HVALS", key)
    assert isinstance(values, list)
    return sum(int(v) for v in values)


async def test_out_of_memory_keeps_max_concurrent_exact(fake: FakeOllama, tmp_path: Path,
                                                        no_memory: RedisServer) -> None:
    redis = no_memory
    async with gates(fake.port, tmp_path, redis.url(), 1, lease_ttl=0.6, keys=keys(max_concurrent=1),
                     limits=TrafficLimits(queue_timeout=0.3)) as (g,):
        reader, writer = await open_stream(g.port, LAPTOP, gen_body(tokens=100000, delay=0.01))
        try:
            assert await live_leases(redis, "t:slots:key:laptop") == 1
            await out_of_memory(redis)
            # Renewals fail: the gate stops trusting Redis, and the stream's lease there runs out.
            await until(lambda: g.state.sick is not None)
            await until(lambda: leases_are(redis, 0))
            fallbacks = g.state.fallbacks
            r = await fetch(g.port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP)
            assert r.status == 503   # the slot is held here; Redis's emptied lease set decides nothing
            assert g.state.fallbacks > fallbacks and g.state.occupancy.running.get("laptop") == 1
            assert g.said.count("answered an error (OOM") == 1
            assert "decided" not in g.said
            await recover(redis)
            # The first renewal that succeeds puts the running stream's lease back.
            await until(lambda: g.state.sick is None, timeout=10)
            assert await live_leases(redis, "t:slots:key:laptop") == 1
            assert "answers without errors again" in g.said
            fallbacks = g.state.fallbacks
            r = await fetch(g.port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP)
            assert r.status == 503 and g.state.fallbacks == fallbacks   # Redis decided, exactly
        finally:
            writer.transport.abort()
        await until(lambda: leases_are(redis, 0))
        assert (await fetch(g.port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP)).status == 200


async def test_out_of_memory_keeps_the_budget_and_loses_no_token(fake: FakeOllama, tmp_path: Path,
                                                                 no_memory: RedisServer) -> None:
    redis = no_memory
    async with gates(fake.port, tmp_path, redis.url(), 1, keys=keys(tokens=parse_budget("300/h"))) as (g,):
        await out_of_memory(redis)
        statuses = []
        # 26 prompt + 20 tokens each, 20 + 22 reserved: the 7th does not fit (276 + 42 > 300)
        for _ in range(9):
            r = await fetch(g.port, "POST", "/api/generate", gen_body(tokens=20), LAPTOP)
            statuses.append(r.status)
            if r.status == 200:   # a refused FINISH is kept here (it is not awaited: it lands within a round trip)
                await until(lambda: sum(t for _, t, _ in g.state.unsent.values()) == 46 * statuses.count(200))
        assert statuses == [200] * 6 + [429] * 3
        assert await tokens_in_redis(redis, "t:tokens:h:laptop") == 0
        await recover(redis)
        await until(lambda: g.state.sick is None, timeout=10)
        await until(lambda: tokens_are(redis, 46 * 6))
        assert not g.state.unsent
        fallbacks = g.state.fallbacks
        r = await fetch(g.port, "POST", "/api/generate", gen_body(tokens=20), LAPTOP)
        assert r.status == 429 and g.state.fallbacks == fallbacks   # Redis's own decision
        assert "decided" not in g.said


async def test_a_script_refused_under_oom_wrote_nothing(redis: RedisServer) -> None:
    """The flags make Redis refuse the whole script: not even its first, harmless-looking write runs."""
    purge_then_add = Script("redis.call('DEL', KEYS[1]); redis.call('SET', KEYS[2], 'x'); return 1")
    await redis.command("SET", "a", "1")
    await redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    await out_of_memory(redis)
    try:
        async with RedisClient(RedisAddress.from_url(redis.url()), timeout=1.0) as client:
            assert await client.wait_connected(5)
            with pytest.raises(RedisReplyError, match="^OOM"):
                await client.evalsha(purge_then_add, ["a", "b"])
        assert await redis.command("GET", "a") == b"1"
    finally:
        await recover(redis)
