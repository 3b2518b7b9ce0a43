"""Several guardproxy instances (GuardServer objects in this process) sharing one redis-server."""

from __future__ import annotations

import asyncio
import io
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

from conftest import Proxy, make_config
from guardproxy.config.model import Cluster, KeyEntry
from guardproxy.engine.accesslog import AccessLog
from guardproxy.engine.server import GuardServer
from guardproxy.engine.state.cluster import RedisState
from support.raw_http import request_bytes


def keys(**laptop: Any) -> tuple[KeyEntry, ...]:
    """The test keys (conftest.py), the laptop's with these settings: a rate, max_concurrent, tokens."""
    base = make_config(1).keys
    return (replace(base[0], **laptop), *base[1:])


class Gate(Proxy):
    @property
    def state(self) -> RedisState:
        state = self.server.state
        assert isinstance(state, RedisState)
        return state

    @property
    def said(self) -> str:
        """What the state has logged (its log is a StringIO here)."""
        log = self.state.log
        assert isinstance(log, io.StringIO)
        return log.getvalue()


@asynccontextmanager
async def gates(fake_port: int, tmp_path: Path, redis_url: str, n: int, *, lease_ttl: float = 1.0,
                op_timeout: float = 0.05, rule: str = "local", cluster: dict[str, Any] | None = None,
                **overrides: Any) -> AsyncIterator[list[Gate]]:
    """`cluster`: more [cluster] fields (sentinels, tls_ca, ...)."""
    out: list[Gate] = []
    try:
        for i in range(n):
            log_path = tmp_path / f"access-{i}.log"
            config = make_config(fake_port, access_log=str(log_path),
                                 cluster=Cluster(redis_url, "t:", lease_ttl, op_timeout, rule, **(cluster or {})),
                                 **overrides)
            server = GuardServer(config, access_log=AccessLog(str(log_path)))
            state = server.state
            assert isinstance(state, RedisState)
            state.log = io.StringIO()
            await server.start()
            out.append(Gate(server, log_path))
        yield out
    finally:
        for g in out:
            await g.server.stop(grace=0)
            g.server.access_log.close()


async def open_stream(port: int, headers: dict[str, str], body: bytes) -> tuple[asyncio.StreamReader,
                                                                                 asyncio.StreamWriter]:
    """A streamed generation, once its first token has arrived: it holds its slot until it ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes("POST", "/api/generate", body, headers))
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"tok0"), 10)
    return reader, writer
