"""A real Sentinel set-up for tests: a redis-server primary, one replica, three redis-sentinel processes.

    async with sentinel_group(tmp_path) as group:
        group.sentinels                 # [("127.0.0.1", port), ...]
        await group.failover()          # SENTINEL FAILOVER; returns once every Sentinel names the new primary

Short down-after-milliseconds and failover-timeout keep a test bounded.  Skipped, with the reason,
when Debian's redis-sentinel is not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import hiredis
import pytest

from .ports import free_port
from .redis_server import RedisServer, need_redis_server

REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
MASTER = "mymaster"
START_TIMEOUT = 20.0


def need_redis_sentinel() -> str:
    if not os.access(REDIS_SENTINEL, os.X_OK):
        pytest.skip("redis-sentinel is not installed (Debian: apt-get install redis-sentinel)")
    return REDIS_SENTINEL


async def ask(host: str, port: int, *command: str | int, timeout: float = 5.0) -> object:
    """One command on a connection of its own; an error reply is returned, not raised."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(hiredis.pack_command(command))  # type: ignore[arg-type]
            parser = hiredis.Reader()
            while (reply := parser.gets()) is False:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError("closed")
                parser.feed(data)
            return reply
        finally:
            writer.close()


@dataclass
class SentinelGroup:
    primary: RedisServer
    replica: RedisServer
    sentinels: list[tuple[str, int]] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    async def master_addr(self, sentinel: tuple[str, int]) -> tuple[str, int] | None:
        reply = await ask(*sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        if isinstance(reply, list) and len(reply) == 2:
            return reply[0].decode(), int(reply[1])
        return None

    async def ready(self) -> bool:
        """Every Sentinel knows the replica as a good one (a failover can pick it)."""
        for s in self.sentinels:
            replicas = await ask(*s, "SENTINEL", "REPLICAS", MASTER)
            if not isinstance(replicas, list) or not replicas:
                return False
            fields = dict(zip(replicas[0][::2], replicas[0][1::2]))
            if fields.get(b"flags") != b"slave" or fields.get(b"master-link-status") != b"ok":
                return False
        return True

    async def failover(self, timeout: float = 30.0) -> tuple[str, int]:
        """Force a failover to the replica; the new primary's address once every Sentinel names it."""
        new = (self.replica.host, self.replica.port)
        reply = await ask(*self.sentinels[0], "SENTINEL", "FAILOVER", MASTER)
        assert reply == b"OK", reply
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all([await self.master_addr(s) == new for s in self.sentinels]):
                return new
            await asyncio.sleep(0.05)   # polling processes that have no event for us, bounded by the deadline
        raise AssertionError("the Sentinels did not switch to the replica in time")


@asynccontextmanager
async def sentinel_group(workdir: Path) -> AsyncIterator[SentinelGroup]:
    need_redis_server()
    sentinel = need_redis_sentinel()
    primary = RedisServer(workdir)
    replica = RedisServer(workdir)
    group = SentinelGroup(primary, replica)
    try:
        await primary.start()
        replica.args = ("--replicaof", primary.host, str(primary.port))
        await replica.start()
        for i in range(3):
            port = free_port()
            conf = workdir / f"sentinel-{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {workdir}\n"
                            f"sentinel monitor {MASTER} {primary.host} {primary.port} 2\n"
                            f"sentinel down-after-milliseconds {MASTER} 1000\n"
                            f"sentinel failover-timeout {MASTER} 4000\n")
            with open(workdir / f"sentinel-{i}.log", "ab") as log:
                group.processes.append(subprocess.Popen([sentinel, str(conf)], stdout=log, stderr=subprocess.STDOUT))
            group.sentinels.append(("127.0.0.1", port))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if await group.ready():
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Sentinels did not see the replica in time"
            await asyncio.sleep(0.1)   # polling processes starting up, bounded by the deadline
        yield group
    finally:
        for p in group.processes:
            p.kill()
            p.wait(timeout=10)
        replica.kill()
        primary.kill()
