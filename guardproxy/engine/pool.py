"""Connections to one upstream host: a small keep-alive pool.

An idle connection the upstream closes is forgotten at once (the relay tells
the pool from connection_lost), so it is never handed out again.  A closed
pool (its host removed by a reload) closes what comes back to it, so the
exchanges still running on it finish and then let go.
"""

from __future__ import annotations

import asyncio

from ..config.model import Upstream
from .failures import connect_failure
from .relay import UpstreamConnection


class UpstreamPool:
    def __init__(self, upstream: Upstream, *, connect_timeout: float, max_idle: int = 64) -> None:
        self.upstream = upstream
        self.authority = upstream.authority.encode()
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: list[UpstreamConnection] = []
        self.closed = False

    def idle(self) -> UpstreamConnection | None:
        """A pooled connection ready for one request, if there is one (no await on the hot path)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (502/504 if it cannot be opened)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(loop, self._forget), self.upstream.host, self.upstream.port)
        except (OSError, TimeoutError) as exc:
            raise connect_failure(exc) from None
        return conn

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """A connection ready for one request: an idle one (unless `fresh`), or a new one."""
        return (None if fresh else self.idle()) or await self.connect()

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or self.closed or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        # The upstream closed an idle connection: never hand it out again.
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
