"""guardproxy as separate processes: `kill -9` of one holding a slot, and token budgets across a restart.

Each instance is `python -m guardproxy run --config FILE`, as a user starts it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import KEY, OTHER_KEY
from guardproxy.config.write import hash_key
from guardproxy.engine.state.tokenfile import state_path
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.gates import open_stream
from support.polling import until
from support.processes import Running
from support.raw_http import fetch
from support.redis_server import RedisServer, redis  # noqa: F401 (redis: a fixture)
from support.wine import REDIS_SERVER

pytestmark = pytest.mark.posix_only(REDIS_SERVER)

one_loop = pytest.mark.asyncio(loop_factories=["asyncio"])   # the processes run their own loops
LAPTOP, PHONE = {"X-API-Key": KEY}, {"X-API-Key": OTHER_KEY}
LEASE_TTL = 1.0


def config_text(upstream_port: int, *, laptop: str = "", tail: str = "", access: str = "") -> str:
    return f"""\
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:{upstream_port}"
[log]
access = "{access}"
[limits]
queue_timeout = "10s"
[[keys]]
name = "laptop"
key_sha256 = "{hash_key(KEY)}"
{laptop}
[[keys]]
name = "phone"
key_sha256 = "{hash_key(OTHER_KEY)}"
rate = "3/min"
{tail}"""


@one_loop
async def test_a_killed_instance_frees_its_slot_within_lease_ttl(fake: FakeOllama, tmp_path: Path,
                                                                redis: RedisServer) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(config_text(fake.port, laptop="max_concurrent = 1",
                               tail=f'[cluster]\nredis = "{redis.url()}"\nkey_prefix = "p:"\nlease_ttl = "{LEASE_TTL}s"\n'))
    first, second = await Running.start("run", "--config", str(cfg)), await Running.start("run", "--config", str(cfg))
    try:
        # Rates hold across the processes: 3/min in all.
        statuses = [(await fetch(p.port, "GET", "/api/version", headers=PHONE)).status
                    for p in (first, second, first, second)]
        assert statuses == [200, 200, 200, 429]
        _, writer = await open_stream(first.port, LAPTOP, gen_body(tokens=100000, delay=0.01))
        waiting = asyncio.ensure_future(fetch(second.port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP))
        await until(lambda: queued(redis))   # the second instance waits for the one slot
        assert not waiting.done()
        first.kill()   # holding the slot: nobody releases it
        killed = time.monotonic()
        r = await asyncio.wait_for(waiting, 10)
        took = time.monotonic() - killed
        assert r.status == 200
        # Free in Redis within lease_ttl, found by the waiter's next poll (every lease_ttl/3).
        assert took < LEASE_TTL + LEASE_TTL / 3 + 1.0, f"the slot came free {took:.2f} s after kill -9"
        writer.close()
    finally:
        first.kill()
        await second.stop()


async def queued(redis: RedisServer) -> bool:
    return await redis.command("EXISTS", "p:queued") == 1


@one_loop
async def test_budgets_survive_a_restart_without_redis(fake: FakeOllama, tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(config_text(fake.port, laptop='tokens = "80/day"', access=str(tmp_path / "access.log")))
    state = state_path(cfg, {})
    one = await Running.start("run", "--config", str(cfg))
    try:
        # Each reserves 10 + its body's bytes / 4 (21) and spends 26 + 10.
        assert (await fetch(one.port, "POST", "/api/generate", gen_body(tokens=10), LAPTOP)).status == 200
        assert (await fetch(one.port, "POST", "/api/generate", gen_body(tokens=10), LAPTOP)).status == 200   # 72
        assert (await fetch(one.port, "POST", "/api/generate", gen_body(tokens=1), LAPTOP)).status == 429
        await until(lambda: saved(state, 72))   # written within a second, without a clean stop
    finally:
        one.kill()
    two = await Running.start("run", "--config", str(cfg))
    try:
        r = await fetch(two.port, "POST", "/api/generate", gen_body(tokens=1), LAPTOP)
        assert r.status == 429 and 1 <= int(r.header("retry-after") or 0) <= 86400
        assert (await fetch(two.port, "POST", "/api/generate", gen_body(tokens=1), PHONE)).status == 200
        usage = subprocess.run([sys.executable, "-m", "guardproxy", "usage", "--config", str(cfg), "--since", "all"],
                               capture_output=True, text=True, timeout=20)
        assert usage.returncode == 0, usage.stderr
        budgets = usage.stdout.split("token budgets")[1].splitlines()
        assert budgets[1].split() == ["key", "budget", "used", "left", "full", "again", "in"]
        assert budgets[2].split()[:4] == ["laptop", "80/day", "72", "8"] and len(budgets) == 3
    finally:
        await two.stop()


async def saved(path: Path, tokens: int) -> bool:
    if not path.exists():
        return False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT COALESCE(SUM(tokens), 0) FROM tokens WHERE key = 'laptop'").fetchone()[0] == tokens
