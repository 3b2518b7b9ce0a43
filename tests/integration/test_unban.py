"""`guardproxy unban ADDRESS|--all`: a ban is lifted in Redis and every running gate forgets its copy within a
second; removing [ban] on a reload does the same for every gate.  Two gates on one real redis-server, and a
gate without Redis that watches its config."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import KEY, OTHER_KEY
from guardproxy.config.load import load_config
from guardproxy.config.model import Ban
from guardproxy.config.write import hash_key
from guardproxy.engine.reload import POLL_INTERVAL, Reloader
from guardproxy.engine.server import GuardServer
from guardproxy.testing.fake_ollama import FakeOllama
from support.gates import Gate, gates
from support.polling import until
from support.processes import gp
from support.raw_http import fetch
from support.redis_server import RedisServer, redis  # noqa: F401 (a fixture)

BAN = Ban(after_failures=2, window=60.0, duration=600.0)
WRONG = {"X-API-Key": "gp_guess-" + "x" * 30}
RIGHT = {"X-API-Key": KEY}


async def status(port: int) -> int:
    return (await fetch(port, "GET", "/api/version", headers=RIGHT)).status


async def let_in(port: int) -> bool:
    return await status(port) == 200


async def ban_everywhere(gs: list[Gate]) -> None:
    """127.0.0.1 banned through the first gate; every gate refuses it, and remembers the ban itself."""
    assert [(await fetch(gs[0].port, "GET", "/api/version", headers=WRONG)).status for _ in range(2)] == [401, 401]
    for g in gs:
        assert await status(g.port) == 429
        assert g.state.fallback.bans.sizes()[1] == 1  # its own copy: the next refusal costs no round trip


def cluster_config(tmp_path: Path, redis: RedisServer) -> Path:
    path = tmp_path / "guardproxy.toml"
    path.write_text(f'[cluster]\nredis = "{redis.url()}"\nkey_prefix = "t:"\n[ban]\nafter_failures = 2\n'
                    f'[[keys]]\nname = "laptop"\nkey_sha256 = "{hash_key(KEY)}"\n')
    return path


async def test_unban_lifts_a_ban_in_redis_and_in_both_gates(fake: FakeOllama, tmp_path: Path,
                                                            redis: RedisServer) -> None:
    path = cluster_config(tmp_path, redis)
    async with gates(fake.port, tmp_path, redis.url(), 2, ban=BAN) as gs:
        await ban_everywhere(gs)
        assert await redis.command("EXISTS", "t:ban:127.0.0.1") == 1
        r = await asyncio.to_thread(gp, "unban", "127.0.0.1", "--config", str(path), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"Redis at {redis.url()}: lifted; every gate on it forgets its copy" in r.stderr
        for g in gs:
            await until(lambda g=g: let_in(g.port), timeout=1.0)
        assert await redis.command("EXISTS", "t:ban:127.0.0.1") == 0
        # Again: nothing is banned any more, and it says so.
        r = await asyncio.to_thread(gp, "unban", "127.0.0.1", "--config", str(path), cwd=tmp_path)
        assert r.returncode == 0 and "it was not banned there" in r.stderr
        await ban_everywhere(gs)
        r = await asyncio.to_thread(gp, "unban", "--all", "--config", str(path), cwd=tmp_path)
        assert r.returncode == 0 and "1 ban lifted" in r.stderr, r.stderr
        for g in gs:
            await until(lambda g=g: let_in(g.port), timeout=1.0)


async def test_removing_ban_on_a_reload_lifts_it_for_every_gate(fake: FakeOllama, tmp_path: Path,
                                                                 redis: RedisServer) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 2, ban=BAN) as gs:
        await ban_everywhere(gs)
        first = gs[0].server
        first.apply_config(replace(first.config, ban=Ban()))   # what a reload of a file without [ban] applies
        # The other gate still has [ban], yet the address is let in: the ban is gone from Redis and from its memory.
        await until(lambda: let_in(gs[1].port), timeout=1.0)
        assert await status(gs[0].port) == 200
        assert await redis.command("EXISTS", "t:ban:127.0.0.1") == 0
        assert "[ban] was removed: 1 ban lifted in Redis" in gs[0].said


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_unban_reaches_a_gate_without_redis_through_its_config_folder(fake: FakeOllama, tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    path.write_text(f'listen = "127.0.0.1:0"\nupstream = "http://127.0.0.1:{fake.port}"\n[log]\naccess = ""\n'
                    f'[ban]\nafter_failures = 2\n[[keys]]\nname = "laptop"\nkey_sha256 = "{hash_key(KEY)}"\n'
                    f'[[keys]]\nname = "phone"\nkey_sha256 = "{hash_key(OTHER_KEY)}"\n')
    server = GuardServer(load_config(path))
    await server.start()
    reloader = Reloader(server, path)
    watch = asyncio.ensure_future(reloader.watch())
    try:
        for lift in (["127.0.0.1"], ["--all"]):
            assert [(await fetch(server.port, "GET", "/api/version", headers=WRONG)).status for _ in range(2)] == [401, 401]
            assert await status(server.port) == 429
            r = await asyncio.to_thread(gp, "unban", *lift, "--config", str(path), cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            assert f"asked the gates of {path} on this machine to lift" in r.stderr
            await until(lambda: let_in(server.port), timeout=2 * POLL_INTERVAL)
        assert reloader.reloads == 0  # the config itself was not touched
    finally:
        watch.cancel()
        await server.stop(grace=0)


def test_unban_refuses_what_is_not_an_address(tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.toml"
    path.write_text(f'[[keys]]\nname = "laptop"\nkey_sha256 = "{hash_key(KEY)}"\n')
    r = gp("unban", "10.0.0.0/8", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 2 and "bans are on single IPv4 addresses and IPv6 /64s" in r.stderr
    assert "config error" not in r.stderr
    r = gp("unban", "nobody\x1b[2J", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 2 and "\x1b" not in r.stderr and "expected an IPv4 address" in r.stderr
