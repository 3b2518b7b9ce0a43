"""Sentinel failover under load: two gates, a redis-server primary, one replica, three redis-sentinel.

While both gates serve a steady load, SENTINEL FAILOVER promotes the replica.  The old primary is
turned into a replica (its clients are killed, its writes answer READONLY); the gates reconnect,
ask the Sentinels again and find the new primary.  After the switch the slot held across the
failover, the rate and the budget are exact again within lease_ttl, and the seconds during which
on_redis_error decided are measured (printed with -s).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import KEY, OTHER_KEY
from guardproxy.config.model import KeyEntry, Rate, TrafficLimits
from guardproxy.config.values import parse_budget
from guardproxy.config.write import hash_key
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.gates import Gate, gates, open_stream
from support.polling import until
from support.raw_http import fetch
from support.redis_server import RedisServer
from support.sentinel import MASTER, SentinelGroup, sentinel_group

BUDGET_KEY = "gp_budget-key-0123456789abcdefghijklmnopq"
LOAD_KEY = "gp_load-key-0123456789abcdefghijklmnopqrst"
LAPTOP, PHONE = {"X-API-Key": KEY}, {"X-API-Key": OTHER_KEY}
BUDGET, LOAD = {"X-API-Key": BUDGET_KEY}, {"X-API-Key": LOAD_KEY}
LEASE_TTL = 1.5
KEYS = (KeyEntry("laptop", bytes.fromhex(hash_key(KEY)), max_concurrent=1),
        KeyEntry("phone", bytes.fromhex(hash_key(OTHER_KEY)), rate=Rate(4, 60.0)),
        KeyEntry("budget", bytes.fromhex(hash_key(BUDGET_KEY)), tokens=parse_budget("100/h")),
        KeyEntry("load", bytes.fromhex(hash_key(LOAD_KEY)), rate=Rate(1_000_000, 60.0)))   # a Redis call each


async def live_leases(server: RedisServer, key: str) -> int:
    t = await server.command("TIME")
    assert isinstance(t, list)
    n = await server.command("ZCOUNT", key, f"({int(t[0]) * 1000 + int(t[1]) // 1000}", "+inf")
    assert isinstance(n, int)
    return n


async def one_lease(server: RedisServer) -> bool:
    return await live_leases(server, "t:slots:key:laptop") == 1


async def tokens_are(server: RedisServer, n: int) -> bool:
    values = await server.command("HVALS", "t:tokens:h:budget")
    return isinstance(values, list) and sum(int(v) for v in values) == n


async def steady_load(g: Gate, stop: asyncio.Event, decided_locally: list[float]) -> int:
    """Requests one after another until `stop`; the moments on_redis_error decided one."""
    loop = asyncio.get_running_loop()
    n = 0
    while not stop.is_set():
        before = g.state.fallbacks
        r = await fetch(g.port, "GET", "/api/version", headers=LOAD)
        assert r.status == 200   # "local": a fallback still serves, within this gate's share
        if g.state.fallbacks != before:
            decided_locally.append(loop.time())
        n += 1
    return n


async def test_sentinel_failover_under_load(fake: FakeOllama, tmp_path: Path) -> None:
    async with sentinel_group(tmp_path) as group:
        await failover_under_load(fake, tmp_path, group)


async def failover_under_load(fake: FakeOllama, tmp_path: Path, group: SentinelGroup) -> None:
    loop = asyncio.get_running_loop()
    sentinels = {"sentinels": [f"{h}:{p}" for h, p in group.sentinels], "sentinel_master": MASTER}
    async with gates(fake.port, tmp_path, "", 2, lease_ttl=LEASE_TTL, cluster=sentinels, keys=KEYS,
                     limits=TrafficLimits(queue_timeout=0.3)) as gs:
        old = (group.primary.host, group.primary.port)
        await until(lambda: all(g.state.connected and g.state.client.primary == old for g in gs), timeout=10)
        await until(lambda: all(g.state.instances == 2 for g in gs), timeout=10)
        # Before: a running generation holds the laptop's one slot; the phone has spent 2 of its
        # 4 a minute; the budget key 46 of its 100 tokens.
        reader, writer = await open_stream(gs[0].port, LAPTOP, gen_body(tokens=100000, delay=0.01))
        try:
            assert [(await fetch(g.port, "GET", "/api/version", headers=PHONE)).status for g in gs] == [200, 200]
            assert (await fetch(gs[1].port, "POST", "/api/generate", gen_body(tokens=20), BUDGET)).status == 200
            await until(lambda: tokens_are(group.primary, 46))
            await until(lambda: tokens_are(group.replica, 46))   # replicated before the switch

            stop = asyncio.Event()
            decided_locally: list[float] = []
            load = [asyncio.ensure_future(steady_load(g, stop, decided_locally)) for g in gs]
            await until(lambda: len(fake.requests) >= 20)
            started = loop.time()
            new = await group.failover()
            switched = loop.time()
            await until(lambda: all(g.state.connected and g.state.client.primary == new for g in gs), timeout=20)
            reconnected = loop.time()
            stop.set()
            served = sum(await asyncio.gather(*load))
            assert served > 0
            # After the switch, within lease_ttl: the slot held across the failover is in the new
            # primary (replicated, or put back by the next renewal), so the other gate waits, then 503.
            await until(lambda: one_lease(group.replica), timeout=LEASE_TTL)
            fallbacks = [g.state.fallbacks for g in gs]
            r = await fetch(gs[1].port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP)
            assert r.status == 503
            # The phone's rate: 2 more, then 429, counted across both gates.
            assert [(await fetch(gs[i % 2].port, "GET", "/api/version", headers=PHONE)).status
                    for i in range(3)] == [200, 200, 429]
            # The budget, by reservation (20 + 22 tokens each): 46 spent before; 92 after one more
            # (46 + 42 fit in 100); then nothing fits: 429.
            statuses = []
            for i in range(3):
                r = await fetch(gs[i % 2].port, "POST", "/api/generate", gen_body(tokens=20), BUDGET)
                statuses.append(r.status)
                if r.status == 200:
                    await until(lambda: tokens_are(group.replica, 46 * (1 + statuses.count(200))))
            assert statuses == [200, 429, 429]
            assert [g.state.fallbacks for g in gs] == fallbacks   # every one of these was Redis's decision
        finally:
            writer.transport.abort()
        window = (max(decided_locally) - min(decided_locally)) if decided_locally else 0.0
        print(f"\nSentinel failover: {served} requests served; SENTINEL FAILOVER to all Sentinels naming the "
              f"new primary {switched - started:.2f} s; gates on it {reconnected - switched:.2f} s later; "
              f"on_redis_error decided {len(decided_locally)} requests over {window:.2f} s")
        assert window < 10.0
