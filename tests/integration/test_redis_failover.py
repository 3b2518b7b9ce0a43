"""A Redis that fails over: error replies that mean "not the primary" drop the connection; connects
back off; scripts are loaded at connect; a replica, a cluster node or an old Redis is not used.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import hiredis
import pytest

from conftest import KEY
from guardproxy.config.model import Rate
from guardproxy.config.redis_url import RedisAddress
from guardproxy.engine.state.cluster import SCRIPTS
from guardproxy.engine.state.commands import Script
from guardproxy.engine.state.resp import RedisClient, RedisRefused, RedisUnavailable
from guardproxy.testing.fake_ollama import FakeOllama
from support.gates import gates, keys
from support.polling import until
from support.raw_http import fetch
from support.ports import free_port
from support.redis_server import RedisServer, redis, redis_server  # noqa: F401 (redis: a fixture)

LAPTOP = {"X-API-Key": KEY}
WRITE = Script("return redis.call('INCR', KEYS[1])")


def address(server: RedisServer) -> RedisAddress:
    return RedisAddress.from_url(server.url())


async def test_scripts_are_loaded_at_connect_and_again_after_noscript(redis: RedisServer) -> None:
    async with RedisClient(address(redis), scripts=SCRIPTS) as client:
        assert await client.wait_connected(5)
        # Loaded before any call, with SCRIPT LOAD (EVAL's cache may evict them in Redis 7.4+).
        assert await redis.command("SCRIPT", "EXISTS", *(s.sha for s in SCRIPTS)) == [1] * len(SCRIPTS)
        assert await redis.command("SCRIPT", "FLUSH") == b"OK"
        assert await client.evalsha(WRITE, ["n"]) == 1   # NOSCRIPT -> SCRIPT LOAD + EVALSHA
        assert await redis.command("SCRIPT", "EXISTS", WRITE.sha) == [1]
    assert all(s.source.startswith(b"#!lua") for s in SCRIPTS)   # flags declared: refused whole under OOM


async def test_readonly_drops_the_connection_and_a_replica_is_not_taken_for_the_primary(
        tmp_path: Path, redis: RedisServer) -> None:
    states: list[tuple[bool, BaseException | None]] = []
    async with RedisClient(address(redis), backoff=(0.01, 0.1), timeout=1.0,
                           on_state=lambda up, e: states.append((up, e))) as client:
        assert await client.wait_connected(5)
        async with redis_server(tmp_path) as primary:
            # As after a failover: the server the gate talks to becomes a replica.
            await redis.command("REPLICAOF", primary.host, str(primary.port))
            with pytest.raises(RedisUnavailable, match="READONLY"):
                await client.evalsha(WRITE, ["n"])
            assert not client.connected
            await until(lambda: "is a replica" in str(client.last_error))   # so not up again
            assert not client.connected and [up for up, _ in states] == [True, False]   # said once
            await redis.command("REPLICAOF", "NO", "ONE")
            assert await client.wait_connected(5)
            assert await client.evalsha(WRITE, ["m"]) == 1


@pytest.mark.posix_only("asserts on delays finer than the 15.6 ms tick of Windows' clock and timers")
async def test_failed_connects_back_off(tmp_path: Path) -> None:
    """A server that accepts and closes at once: attempts double their spacing, 50 ms up to 5 s."""
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(loop.time())
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RedisClient(RedisAddress("127.0.0.1", port)) as client:
            await until(lambda: len(attempts) >= 5, timeout=10)
            assert not client.connected
    finally:
        server.close()
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # Jitter takes each step's wait from half of it to all of it: 50 ms, 100, 200, 400, ...
    for i, gap in enumerate(gaps[:4]):
        assert 0.05 * 2 ** i * 0.5 - 0.005 <= gap, gaps
    assert gaps[3] >= 0.2, gaps


@pytest.mark.posix_only("asserts on delays finer than the 15.6 ms tick of Windows' clock and timers")
async def test_a_connection_that_drops_soon_after_it_was_made_is_not_made_again_at_once() -> None:
    """A server that answers the handshake, then closes 20 ms later (a flapping proxy, a failing
    failover): reconnects back off, instead of looping as fast as the server closes."""
    loop = asyncio.get_running_loop()
    accepted: list[float] = []

    async def flapping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(loop.time())
        parser = hiredis.Reader()
        try:
            async with asyncio.timeout(0.02):
                while data := await reader.read(65536):
                    parser.feed(data)
                    while (command := parser.gets()) is not False:
                        name = command[0].upper()
                        if name == b"INFO":
                            info = b"# Server\r\nredis_version:7.2.4\r\n# Replication\r\nrole:master\r\n"
                            writer.write(b"$%d\r\n%s\r\n" % (len(info), info))
                        else:
                            writer.write(b"+PONG\r\n")
        except TimeoutError:
            pass
        writer.close()

    server = await asyncio.start_server(flapping, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ups: list[bool] = []
    try:
        async with RedisClient(RedisAddress("127.0.0.1", port), on_state=lambda up, e: ups.append(up)):
            await until(lambda: len(accepted) >= 4, timeout=10)
    finally:
        server.close()
    assert ups[:2] == [True, False]   # it was up: a working connection that dropped
    gaps = [b - a for a, b in zip(accepted, accepted[1:])]
    # 20 ms up, then a step that doubles: 50-100 ms, 100-200, 200-400.
    assert gaps[0] >= 0.02 + 0.05 - 0.005 and gaps[1] >= 0.02 + 0.1 - 0.005 and gaps[2] >= 0.02 + 0.2 - 0.005, gaps


async def test_redis_cluster_is_refused_clearly(tmp_path: Path) -> None:
    async with redis_server(tmp_path, args=["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                                            "--cluster-config-file", str(tmp_path / "nodes.conf")]) as node:
        states: list[tuple[bool, BaseException | None]] = []
        async with RedisClient(address(node), on_state=lambda up, e: states.append((up, e))) as client:
            assert not await client.wait_connected(0.5)
        assert len(states) == 1 and isinstance(states[0][1], RedisRefused)
        assert "Redis Cluster is not supported" in str(states[0][1])


async def test_a_gate_whose_redis_turns_replica_stops_trusting_it_until_it_is_primary_again(
        fake: FakeOllama, tmp_path: Path, redis: RedisServer) -> None:
    """Not stuck: READONLY is a lost primary, not an error reply on a connection that stays up."""
    async with redis_server(tmp_path) as primary:
        async with gates(fake.port, tmp_path, redis.url(), 1, keys=keys(rate=Rate(4, 60.0))) as (g,):
            assert (await fetch(g.port, "GET", "/api/version", headers=LAPTOP)).status == 200
            await redis.command("REPLICAOF", primary.host, str(primary.port))
            assert (await fetch(g.port, "GET", "/api/version", headers=LAPTOP)).status == 200   # decided here
            await until(lambda: not g.state.connected)
            assert g.said.count("unreachable") == 1 and "READONLY" in g.said, g.said
            assert (await fetch(g.port, "GET", "/api/version", headers=LAPTOP)).status == 200
            assert g.state.fallbacks >= 2
            await redis.command("REPLICAOF", "NO", "ONE")
            await until(lambda: g.state.connected, timeout=10)
            assert g.said.count("reachable again") == 1 and g.said.count("unreachable") == 1, g.said
            fallbacks = g.state.fallbacks
            await redis.command("FLUSHALL")
            statuses = [(await fetch(g.port, "GET", "/api/version", headers=LAPTOP)).status for _ in range(5)]
            assert statuses == [200] * 4 + [429] and g.state.fallbacks == fallbacks   # shared again
