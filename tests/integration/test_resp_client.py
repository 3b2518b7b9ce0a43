"""guardproxy's Redis client against a real redis-server (tests/support/redis_server.py starts one per test)."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import pytest

from guardproxy.config.load import cluster_address, parse_config
from guardproxy.config.redis_url import RedisAddress
from guardproxy.engine.state.commands import Script
from guardproxy.engine.state.pubsub import RedisSubscriber
from guardproxy.engine.state.resp import RedisClient, RedisRefused, RedisReplyError, RedisTimeout, RedisUnavailable
from support.polling import until
from support.ports import free_port
from support.redis_server import RedisServer, redis, redis_server, tls_files  # noqa: F401 (redis: a fixture)
from support.wine import REDIS_SERVER

pytestmark = pytest.mark.posix_only(REDIS_SERVER)

ECHO = Script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
SLACK = 0.1   # scheduling on a busy 2-core machine; a stalled call would take the whole second


@asynccontextmanager
async def client_for(url: str, **options: object) -> AsyncIterator[RedisClient]:
    client = RedisClient(RedisAddress.from_url(url), backoff=(0.01, 0.1), **options)  # type: ignore[arg-type]
    client.start()
    try:
        assert await client.wait_connected(5), "the client did not connect"
        yield client
    finally:
        await client.close()


# ---------------------------------------------------------------- addresses

def test_urls() -> None:
    a = RedisAddress.from_url("redis://:p%40ss@10.0.0.5:6380/2")
    assert (a.host, a.port, a.tls, a.username, a.password, a.db) == ("10.0.0.5", 6380, False, None, "p@ss", 2)
    assert RedisAddress.from_url("rediss://alice:pw@redis.example/") == RedisAddress("redis.example", 6379, True,
                                                                                     "alice", "pw", 0)
    assert RedisAddress.from_url("redis://[::1]").host == "::1"
    hidden = RedisAddress.from_url("redis://:pw@h")
    assert "pw" not in repr(hidden) and hidden.url == "redis://:***@h:6379/0"
    assert RedisAddress.from_url("redis://u:pw@[::1]:7/1").url == "redis://u:***@[::1]:7/1"
    for bad in ("http://h", "redis://", "redis://h/x", "redis://h?db=1", "redis://alice@h", "redis://h:notaport"):
        with pytest.raises(ValueError):
            RedisAddress.from_url(bad)


def test_the_environment_url_replaces_the_configured_one() -> None:
    env = {"GUARDPROXY_REDIS_URL": "redis://:secret@10.1.1.1:6390/1"}
    config = parse_config({"keys": [{"name": "a", "key": "x" * 20}], "cluster": {"redis": "redis://127.0.0.1/0"}}, None)
    assert cluster_address(config, env) == RedisAddress("10.1.1.1", 6390, False, None, "secret", 1)
    assert cluster_address(config, {}) == RedisAddress("127.0.0.1")


# ---------------------------------------------------------------- calls and scripts

async def test_evalsha_round_trips_and_caches_the_script(redis: RedisServer) -> None:
    async with client_for(redis.url()) as client:
        assert await client.evalsha(ECHO, ["k"], [7]) == [b"k", b"7", 1]
        assert await client.evalsha(ECHO, ["k"], ["x"]) == [b"k", b"x", 2]
        assert await redis.command("SCRIPT", "EXISTS", ECHO.sha) == [1]
        assert await client.call("SET", "s", b"\x00\r\nbin") == b"OK"
        assert await client.call("GET", "s") == b"\x00\r\nbin"
        assert await client.call("GET", "missing") is None


async def test_noscript_after_script_flush_loads_the_script_again(redis: RedisServer) -> None:
    async with client_for(redis.url()) as client:
        assert (await client.evalsha(ECHO, ["k"], [1]))[2] == 1  # type: ignore[index]
        assert await redis.command("SCRIPT", "FLUSH") == b"OK"
        assert await redis.command("SCRIPT", "EXISTS", ECHO.sha) == [0]
        assert (await client.evalsha(ECHO, ["k"], [1]))[2] == 2  # type: ignore[index]
        assert await redis.command("SCRIPT", "EXISTS", ECHO.sha) == [1]


async def test_error_replies_raise_and_leave_the_connection_up(redis: RedisServer) -> None:
    async with client_for(redis.url()) as client:
        with pytest.raises(RedisReplyError, match="boom"):
            await client.evalsha(Script("return redis.error_reply('boom')"))
        assert await client.call("SET", "str", "v") == b"OK"
        with pytest.raises(RedisReplyError, match="WRONGTYPE"):
            await client.call("LPUSH", "str", "x")
        assert client.connected
        assert await client.call("PING") == b"PONG"


async def server_stat(redis: RedisServer, section: str, name: str) -> int:
    info = await redis.command("INFO", section)
    assert isinstance(info, bytes)
    return int(info.split(f"{name}:".encode())[1].split()[0])


async def test_100_concurrent_calls_share_one_connection_and_one_write(redis: RedisServer) -> None:
    async with client_for(redis.url()) as client:
        reads_before = await server_stat(redis, "stats", "total_reads_processed")
        replies = await asyncio.gather(*(client.call("INCR", "n") for _ in range(100)))
        reads = await server_stat(redis, "stats", "total_reads_processed") - reads_before
        assert replies == list(range(1, 101))    # in order: each future got its own reply
        assert await server_stat(redis, "clients", "connected_clients") == 2    # the client and this INFO
        # Redis read the 100 commands in one go (+1: the INFO command's own read); written one by
        # one, they would mostly arrive in reads of their own
        assert reads <= 3, reads


async def test_a_cancelled_call_does_not_shift_the_replies(redis: RedisServer) -> None:
    async with client_for(redis.url(), timeout=5.0) as client:
        slow = asyncio.create_task(client.call("DEBUG", "SLEEP", "0.2"))
        behind = asyncio.create_task(client.call("INCR", "n"))
        # Both queued on the connection (one write carries them): the INCR goes out, whatever happens to its caller.
        await until(lambda: client._conn is not None and len(client._conn.pending) == 2)
        behind.cancel()
        assert await slow == b"OK"
        assert await client.call("INCR", "n") == 2   # the cancelled INCR ran; its reply was dropped
        assert await client.call("GET", "n") == b"2"


# ---------------------------------------------------------------- AUTH, SELECT, TLS

async def test_auth_with_a_password(tmp_path: Path) -> None:
    async with redis_server(tmp_path, password="s3cr:t") as server:
        async with client_for(server.url().replace("s3cr:t", "s3cr%3At")) as client:
            assert await client.call("PING") == b"PONG"
        for url in (server.url(password="wrong"), f"redis://127.0.0.1:{server.port}/0"):
            states: list[tuple[bool, BaseException | None]] = []
            client = RedisClient(RedisAddress.from_url(url), backoff=(0.01, 0.1),
                                 on_state=lambda up, error: states.append((up, error)))
            client.start()
            try:
                assert not await client.wait_connected(0.3)
                with pytest.raises(RedisUnavailable):
                    await client.call("PING")
            finally:
                await client.close()
            assert len(states) == 1 and states[0][0] is False      # reported once, not per attempt
            assert isinstance(states[0][1], RedisRefused)
            assert "WRONGPASS" in str(states[0][1]) or "NOAUTH" in str(states[0][1])


async def test_auth_with_a_user_and_password(tmp_path: Path) -> None:
    async with redis_server(tmp_path, args=["--user", "gate", "on", ">pw", "~*", "&*", "+@all"]) as server:
        async with client_for(f"redis://gate:pw@127.0.0.1:{server.port}/0") as client:
            assert await client.call("ACL", "WHOAMI") == b"gate"


async def test_select_db(redis: RedisServer) -> None:
    async with client_for(redis.url(db=3)) as client:
        assert await client.evalsha(ECHO, ["k"], [1]) == [b"k", b"1", 1]
    assert await redis.command("GET", "k", db=3) == b"1"
    assert await redis.command("GET", "k") is None


async def test_rediss(tmp_path: Path) -> None:
    tls = tls_files(tmp_path)
    async with redis_server(tmp_path, tls=tls) as server:
        async with client_for(server.url(), ssl_context=tls.client_context) as client:
            assert await client.evalsha(ECHO, ["k"], [1]) == [b"k", b"1", 1]
        untrusted = RedisClient(RedisAddress.from_url(server.url()), backoff=(0.01, 0.1))   # system CAs only
        untrusted.start()
        try:
            assert not await untrusted.wait_connected(0.3)
        finally:
            await untrusted.close()


# ---------------------------------------------------------------- Redis slow, down, back

async def test_a_call_to_a_stopped_server_returns_within_its_timeout(redis: RedisServer) -> None:
    async with client_for(redis.url()) as client:
        redis.pause()
        try:
            start = time.monotonic()
            with pytest.raises(RedisTimeout):
                await client.evalsha(ECHO, ["k"], [1], timeout=0.2)
            elapsed = time.monotonic() - start
            assert 0.19 <= elapsed < 0.2 + SLACK
            start = time.monotonic()
            with pytest.raises(RedisUnavailable):
                await client.call("PING")         # no waiting behind a late reply, no hidden retry
            assert time.monotonic() - start < SLACK
            # The late reply is `grace` (the back-off step, 10 ms here) later still: dropped.
            await until(lambda: not client.connected, timeout=0.01 + SLACK)
        finally:
            redis.resume()
        assert await client.wait_connected(5)
        assert await client.evalsha(ECHO, ["k"], [1]) == [b"k", b"1", 1]


async def test_a_slow_reply_ahead_in_the_pipe_times_out_the_call_behind(redis: RedisServer) -> None:
    async with client_for(redis.url()) as client:
        slow = asyncio.create_task(client.call("DEBUG", "SLEEP", "1", timeout=5))
        start = time.monotonic()
        with pytest.raises(RedisTimeout):
            await client.evalsha(ECHO, ["k"], [1], timeout=0.1)
        assert time.monotonic() - start < 0.1 + SLACK
        with pytest.raises(RedisUnavailable):
            await slow                            # its reply is past grace: the connection is dropped
        assert time.monotonic() - start < 0.1 + 0.01 + SLACK
        assert await client.wait_connected(5)
        assert await client.call("PING") == b"PONG"


async def test_a_slow_redis_is_not_reconnected_to_on_every_missed_deadline(redis: RedisServer) -> None:
    """Replies later than op_timeout but within the back-off step: the calls time out, the connection stays."""
    states: list[bool] = []
    async with client_for(redis.url(), on_state=lambda up, error: states.append(up)) as client:
        conn = client._conn
        assert conn is not None
        conn.grace = 1.0   # as after a few drops: the step has grown
        for _ in range(3):
            with pytest.raises(RedisTimeout):     # each takes 200 ms, past its 10 ms
                await client.evalsha(Script("redis.call('TIME'); local t = redis.call('TIME'); "
                                            "while true do local u = redis.call('TIME'); "
                                            "if (u[1] - t[1]) * 1000000 + u[2] - t[2] > 200000 then return 1 end end"),
                                     timeout=0.01)
            await until(lambda: not conn.pending)   # its late reply came, and was dropped
            assert await client.call("INCR", "n", timeout=1.0) == _ + 1   # nothing out of step
        assert client._conn is conn and states == [True]


async def test_reconnects_after_the_server_is_killed_and_restarted(redis: RedisServer) -> None:
    states: list[bool] = []
    async with client_for(redis.url(), on_state=lambda up, error: states.append(up)) as client:
        assert await client.evalsha(ECHO, ["k"], [1]) == [b"k", b"1", 1]
        redis.kill()
        with pytest.raises(RedisUnavailable):
            await client.evalsha(ECHO, ["k"], [1])
        await redis.start()                       # same port, empty: no keys, no scripts
        assert await client.wait_connected(5)
        assert await client.evalsha(ECHO, ["k"], [1]) == [b"k", b"1", 1]
    assert states == [True, False, True]


async def test_unreachable_fails_at_once(tmp_path: Path) -> None:
    states: list[tuple[bool, BaseException | None]] = []
    client = RedisClient(RedisAddress("127.0.0.1", free_port()), on_state=lambda up, e: states.append((up, e)))
    client.start()
    try:
        assert not await client.wait_connected(0.2)
        start = time.monotonic()
        with pytest.raises(RedisUnavailable, match="not connected"):
            await client.call("PING")
        assert time.monotonic() - start < SLACK
    finally:
        await client.close()
    assert len(states) == 1 and isinstance(states[0][1], ConnectionRefusedError)


# ---------------------------------------------------------------- pub/sub

async def test_pubsub_delivers_and_resubscribes_after_a_restart(redis: RedisServer) -> None:
    got: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
    subscriber = RedisSubscriber(RedisAddress.from_url(redis.url()), ["gp:slots", b"gp:bans"],
                                 lambda channel, data: got.put_nowait((channel, data)), backoff=(0.01, 0.1))
    subscriber.start()
    try:
        async with client_for(redis.url()) as client:
            assert await subscriber.wait_connected(5)
            assert await client.publish("gp:slots", b"key:laptop") == 1
            assert await client.publish("gp:other", b"nobody listens") == 0
            assert await client.publish("gp:bans", "203.0.113.9") == 1
            async with asyncio.timeout(5):
                assert await got.get() == (b"gp:slots", b"key:laptop")
                assert await got.get() == (b"gp:bans", b"203.0.113.9")
            redis.kill()
            await redis.start()
            assert await subscriber.wait_connected(5) and await client.wait_connected(5)
            assert await client.publish("gp:slots", b"again") == 1
            async with asyncio.timeout(5):
                assert await got.get() == (b"gp:slots", b"again")
    finally:
        await subscriber.close()


async def test_a_subscriber_notices_a_stopped_server_by_its_unanswered_ping(redis: RedisServer) -> None:
    down = asyncio.Event()
    subscriber = RedisSubscriber(RedisAddress.from_url(redis.url()), ["gp:slots"], lambda channel, data: None,
                                 ping_interval=0.1, on_state=lambda up, error: None if up else down.set())
    subscriber.start()
    try:
        assert await subscriber.wait_connected(5)
        redis.pause()
        try:
            async with asyncio.timeout(0.2 + 0.1 + SLACK):     # one PING sent, then one interval unanswered
                await down.wait()
            assert not subscriber.connected
        finally:
            redis.resume()
        assert await subscriber.wait_connected(5)
    finally:
        await subscriber.close()
