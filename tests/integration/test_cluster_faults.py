"""Redis killed, paused and restarted under each on_redis_error rule: decided at once, logged once, back again.

"local": each of the two instances enforces half the limits; "open": none; "closed": 503.
No request waits past op_timeout for a Redis that does not answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from conftest import KEY, OTHER_KEY
from guardproxy.config.model import Rate
from guardproxy.config.values import parse_budget
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.gates import Gate, gates, keys
from support.polling import until
from support.raw_http import RawResponse, fetch
from support.redis_server import RedisServer, redis, stalled  # noqa: F401 (redis: a fixture)
from support.wine import REDIS_SERVER

pytestmark = pytest.mark.posix_only(REDIS_SERVER)

LAPTOP, PHONE = {"X-API-Key": KEY}, {"X-API-Key": OTHER_KEY}
OP_TIMEOUT = 0.05
SLACK = 0.3   # a busy 2-core machine; a stalled call would wait for the whole connect timeout (1 s)
RULES = ["local", "open", "closed"]


async def timed(port: int, headers: dict[str, str], path: str = "/api/version") -> tuple[RawResponse, float]:
    t0 = time.monotonic()
    r = await fetch(port, "GET", path, headers=headers)
    return r, time.monotonic() - t0


async def check_rule(rule: str, gs: list[Gate]) -> None:
    """Three requests of the key on each instance, while Redis does not answer."""
    statuses = []
    for g in gs:
        for _ in range(3):
            r, took = await timed(g.port, LAPTOP)
            assert took < OP_TIMEOUT + SLACK, f"a request waited {took:.3f} s for Redis"
            statuses.append(r.status)
            if rule == "closed":
                assert json.loads(r.body) == {"error": "limits unavailable; try again later"}
    # local: 4/min shared by the 2 instances last seen is 2/min each.
    assert statuses == {"local": [200, 200, 429] * 2, "open": [200] * 6, "closed": [503] * 6}[rule]
    assert (await fetch(gs[0].port, "GET", "/health")).status == 200   # no limit applies to it
    assert (await fetch(gs[0].port, "GET", "/api/version")).status == 401
    assert all(g.state.fallbacks > 0 for g in gs)


async def shared_again(redis: RedisServer, gs: list[Gate], *, dropped: bool = True) -> None:
    await until(lambda: all(g.state.connected for g in gs), timeout=10)
    for g in gs:
        # Paused briefly, a connection whose late reply came within its back-off step stays up.
        assert g.said.count("unreachable") == g.said.count("reachable again") == 1 or \
            not dropped and g.said.count("unreachable") == g.said.count("reachable again") == 0, g.said
    await redis.command("FLUSHALL")
    statuses = [(await fetch(gs[i % 2].port, "GET", "/api/version", headers=LAPTOP)).status for i in range(5)]
    assert statuses == [200] * 4 + [429]


@pytest.mark.parametrize("rule", RULES)
async def test_redis_killed_and_restarted(fake: FakeOllama, tmp_path: Path, redis: RedisServer, rule: str) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 2, rule=rule, lease_ttl=0.6, op_timeout=OP_TIMEOUT,
                     keys=keys(rate=Rate(4, 60.0))) as gs:
        await until(lambda: all(g.state.instances == 2 for g in gs))
        redis.kill()
        await until(lambda: not any(g.state.connected for g in gs))
        await check_rule(rule, gs)
        await redis.start()
        await shared_again(redis, gs)


@pytest.mark.parametrize("rule", RULES)
async def test_redis_paused_then_resumed(fake: FakeOllama, tmp_path: Path, redis: RedisServer, rule: str) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 2, rule=rule, lease_ttl=0.6, op_timeout=OP_TIMEOUT,
                     keys=keys(rate=Rate(4, 60.0))) as gs:
        await until(lambda: all(g.state.instances == 2 for g in gs))
        redis.pause()   # SIGSTOP: connections stay open, nothing answers
        try:
            await check_rule(rule, gs)
            assert all(g.state.errors >= 1 for g in gs)   # the calls that timed out
        finally:
            redis.resume()
        await shared_again(redis, gs, dropped=False)


async def test_debug_sleep_is_waited_out_for_op_timeout_only(fake: FakeOllama, tmp_path: Path,
                                                            redis: RedisServer) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 1, op_timeout=OP_TIMEOUT, keys=keys(rate=Rate(4, 60.0))) as (g,):
        assert (await fetch(g.port, "GET", "/api/version", headers=LAPTOP)).status == 200
        sleeping = asyncio.ensure_future(redis.command("DEBUG", "SLEEP", "1", timeout=10))
        await until(lambda: stalled(redis))
        r, took = await timed(g.port, LAPTOP)
        assert r.status == 200 and took < OP_TIMEOUT + SLACK and g.state.fallbacks == 1
        await sleeping
        await until(lambda: g.state.connected, timeout=10)
        assert g.said.count("unreachable") == 1


async def test_tokens_counted_without_redis_reach_it_when_it_is_back(fake: FakeOllama, tmp_path: Path,
                                                                     redis: RedisServer) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 1, keys=keys(tokens=parse_budget("1000/h"))) as (g,):
        redis.kill()
        await until(lambda: not g.state.connected)
        assert (await fetch(g.port, "POST", "/api/generate", gen_body(tokens=20), LAPTOP)).status == 200   # 26 + 20
        assert g.state.unsent and g.state.fallbacks == 1
        await redis.start()
        await until(lambda: tokens_in_redis(redis, 46), timeout=10)
        assert not g.state.unsent


async def tokens_in_redis(redis: RedisServer, n: int) -> bool:
    values = await redis.command("HVALS", "t:tokens:h:laptop")
    return isinstance(values, list) and sum(int(v) for v in values) == n
