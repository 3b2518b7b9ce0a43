"""A generation that fails over to another host under [cluster] takes that host's shared lease with it.

Two gates share a real redis-server in front of two hosts with max_concurrent = 1.  gpu-a holds the
model warm (so it is chosen first) and answers 503 to every generation; gpu-b has the model cold.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest

from conftest import ADMIN_KEY, KEY
from guardproxy.config.model import Routing, TrafficLimits
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.gates import Gate, gates, open_stream
from support.hosts import Fakes, host, models_asked
from support.polling import until
from support.raw_http import fetch
from support.redis_server import RedisServer, redis  # noqa: F401 (redis: a fixture)
from support.wine import REDIS_SERVER

pytestmark = pytest.mark.posix_only(REDIS_SERVER)

LAPTOP = {"X-API-Key": KEY}
TO_B = {"X-API-Key": ADMIN_KEY, "X-Guardproxy-Upstream": "gpu-b"}
A_SLOTS, B_SLOTS = "t:slots:host:gpu-a", "t:slots:host:gpu-b"


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[FakeOllama, FakeOllama]]:
    fakes = Fakes()
    try:
        a = await fakes.start(0, models=["llama3.2"], loaded=["llama3.2"], busy=True)
        b = await fakes.start(1, models=["llama3.2"])
        yield a, b
    finally:
        await fakes.close()


async def zcards(redis: RedisServer) -> tuple[object, object]:
    return await redis.command("ZCARD", A_SLOTS), await redis.command("ZCARD", B_SLOTS)


def both_hosts(a: FakeOllama, b: FakeOllama) -> dict[str, object]:
    # One health round at start-up (the model warm on gpu-a); none during the test.
    return {"upstreams": (host(0, a, max_concurrent=1), host(1, b, max_concurrent=1)),
            "routing": Routing(health_interval=60.0), "limits": TrafficLimits(queue_timeout=10.0)}


async def checked(gs: list[Gate]) -> None:
    await until(lambda: all(g.server.health.rounds >= 1 for g in gs))


async def test_a_failover_moves_the_hosts_lease_so_its_max_concurrent_holds_across_instances(
        tmp_path: Path, redis: RedisServer, hosts: tuple[FakeOllama, FakeOllama]) -> None:
    a, b = hosts
    async with gates(a.port, tmp_path, redis.url(), 2, lease_ttl=30.0, **both_hosts(a, b)) as gs:
        await checked(gs)
        reader, writer = await open_stream(gs[0].port, LAPTOP, gen_body(tokens=100000, delay=0.01))
        # gpu-a said 503; the generation runs on gpu-b
        assert models_asked(a) == ["llama3.2"] and models_asked(b) == ["llama3.2"]
        assert await zcards(redis) == (0, 1)
        assert gs[0].state.occupancy.hosts == {"gpu-b": 1}
        # gpu-b is full for the other gate too: its request waits for the lease.
        waiting = asyncio.ensure_future(fetch(gs[1].port, "POST", "/api/generate", gen_body(tokens=2), TO_B))
        await until(lambda: gs[1].state.slots.queue.queued == 1)
        assert not waiting.done() and len(models_asked(b)) == 1
        writer.transport.abort()
        r = await asyncio.wait_for(waiting, 10)
        assert r.status == 200 and b'"done":true' in r.body
        await until(lambda: all(g.state.occupancy.total == 0 for g in gs))
        await until(lambda: _empty(redis))
        assert [m.host.in_flight for g in gs for m in g.server.hosts.members.values()] == [0, 0, 0, 0]
        assert [(g.state.errors, g.state.fallbacks) for g in gs] == [(0, 0), (0, 0)]


async def test_no_failover_to_a_host_another_instance_has_filled(
        tmp_path: Path, redis: RedisServer, hosts: tuple[FakeOllama, FakeOllama]) -> None:
    a, b = hosts
    async with gates(a.port, tmp_path, redis.url(), 2, lease_ttl=30.0, **both_hosts(a, b)) as gs:
        await checked(gs)
        reader, writer = await open_stream(gs[1].port, TO_B, gen_body(tokens=100000, delay=0.01))
        # gpu-a answers 503; gpu-b is full (on the other gate): the client reads gpu-a's answer.
        r = await fetch(gs[0].port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP)
        assert r.status == 503 and b"server busy" in r.body
        assert len(models_asked(a)) == 1 and len(models_asked(b)) == 1
        await until(lambda: _counts(redis, (0, 1)))
        assert [m.host.in_flight for m in gs[0].server.hosts.members.values()] == [0, 0]
        writer.transport.abort()
        await until(lambda: _empty(redis))


async def _counts(redis: RedisServer, want: tuple[int, int]) -> bool:
    return await zcards(redis) == want


async def _empty(redis: RedisServer) -> bool:
    return await _counts(redis, (0, 0))


async def test_with_redis_down_a_failover_moves_the_slot_this_instance_counts(
        tmp_path: Path, redis: RedisServer, hosts: tuple[FakeOllama, FakeOllama]) -> None:
    a, b = hosts
    async with gates(a.port, tmp_path, redis.url(), 1, **both_hosts(a, b)) as gs:
        g = gs[0]
        await checked(gs)
        redis.kill()
        await until(lambda: not g.state.connected)
        # on_redis_error = "local": the host's slot is counted here, and moves as in Redis.
        reader, writer = await open_stream(g.port, LAPTOP, gen_body(tokens=100000, delay=0.01))
        assert models_asked(a) == ["llama3.2"] and models_asked(b) == ["llama3.2"]
        assert g.state.occupancy.hosts == {"gpu-b": 1}
        assert [t.host for t in g.state.leases.values()] == ["gpu-b"]
        # gpu-b is full here: a second generation, sent to gpu-a again, is not failed over to it.
        g.server.hosts.members["gpu-a"].host.open_until = float("-inf")   # (gpu-a's breaker is not waited out)
        r = await fetch(g.port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP)
        assert r.status == 503 and len(models_asked(b)) == 1
        writer.transport.abort()
        await until(lambda: g.state.occupancy.total == 0)
