"""Connections to one upstream host: a small keep-alive pool.

An idle connection the upstream closes is forgotten at once (the relay tells
the pool from connection_lost), so it is never handed out again.  A closed
pool (its host removed by a reload) closes what comes back to it, so the
exchanges still running on it finish and then let go.

A connection can also die without a word (a NAT or a firewall forgets it),
and a host can send bytes nobody asked for.  So: idle connections expire
after `idle_timeout` ([timeouts] upstream_idle), the kernel probes every
upstream socket (SO_KEEPALIVE), and a connection is checked for readability
just before it is reused: anything to read then (stray bytes, an EOF not yet
seen) means it is not in sync with us, and it is closed instead.
"""

from __future__ import annotations

import asyncio
import select
import socket

from ..config.model import Upstream
from ..decisions.routes import Route
from .failures import UpstreamGone, connect_failure
from .relay import UpstreamConnection

KEEPALIVE_IDLE = 30       # seconds of silence before the kernel's first probe (Caddy probes every 30 s)
KEEPALIVE_INTERVAL = 10   # between probes
KEEPALIVE_PROBES = 3      # unanswered probes before the connection is dropped


def is_read(route: Route) -> bool:
    """The route only reads (a listing, show, version): running it twice changes nothing and costs
    little.  Generations and administration (and routes not in the table) are not reads."""
    return not route.admin and not route.generation


def may_send_again(conn: UpstreamConnection | None, exc: BaseException, *, read: bool, streamed: bool) -> bool:
    """The one rule for sending a request again, on a fresh connection to the same host, after the
    pooled connection it went out on turned out dead.

    Only a connection that died before any byte of an answer came back (the host had
    closed it, or it was gone), and only under the replay rule: the request's bytes may
    have reached the host and run there, so only a read (`is_read`) is sent again, never
    a generation or a change (as nginx, which does not resend a non-idempotent request once
    sent); and never a body that was streamed (it is gone).  A pooled connection found dead
    before anything was written to it is never used (`UpstreamPool.idle`).
    """
    return (read and not streamed and conn is not None and conn.reused and isinstance(exc, UpstreamGone)
            and not conn.answered)


def set_keepalive(sock: socket.socket) -> None:
    """TCP keep-alive probes on an upstream socket, where the platform has them."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                            ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass


if hasattr(select, "poll"):
    def readable(fd: int) -> bool:
        """Something to read (bytes or an EOF) on the socket right now."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
else:  # Windows: select() takes sockets, and has no descriptor ceiling there
    def readable(fd: int) -> bool:
        """Something to read (bytes or an EOF) on the socket right now."""
        return bool(select.select([fd], [], [], 0)[0])


class UpstreamPool:
    def __init__(self, upstream: Upstream, *, connect_timeout: float, idle_timeout: float = 60.0,
                 max_idle: int = 64) -> None:
        self.upstream = upstream
        self.authority = upstream.authority.encode()
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._idle: list[UpstreamConnection] = []   # oldest first: released in time order, reused from the end
        self._expiry: asyncio.TimerHandle | None = None
        self.closed = False

    def idle(self) -> UpstreamConnection | None:
        """A pooled connection ready for one request, if there is one (no await on the hot path)."""
        while self._idle:
            conn = self._idle.pop()
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                continue
            if conn.loop.time() - conn.idle_since >= self.idle_timeout or _readable(transport):
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (502/504 if it cannot be opened)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: UpstreamConnection(loop, self._forget), self.upstream.host, self.upstream.port)
        except (OSError, TimeoutError) as exc:
            raise connect_failure(exc) from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            set_keepalive(sock)
        return conn

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """A connection ready for one request: an idle one (unless `fresh`), or a new one."""
        return (None if fresh else self.idle()) or await self.connect()

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or self.closed or len(self._idle) >= self.max_idle or self.idle_timeout <= 0:
            conn.close()
            return
        conn.idle_since = now = conn.loop.time()
        self._idle.append(conn)
        if self._expiry is None:
            self._expiry = conn.loop.call_at(now + self.idle_timeout, self._expire)

    def _expire(self) -> None:
        """Close the connections idle for `idle_timeout`; come back for the next one to expire."""
        self._expiry = None
        idle = self._idle
        if not idle:
            return
        loop = idle[0].loop
        deadline = loop.time() - self.idle_timeout
        expired = 0
        while expired < len(idle) and idle[expired].idle_since <= deadline:
            expired += 1
        gone, self._idle = idle[:expired], idle[expired:]
        for conn in gone:
            conn.close()
        if self._idle:
            self._expiry = loop.call_at(self._idle[0].idle_since + self.idle_timeout, self._expire)

    def _forget(self, conn: UpstreamConnection) -> None:
        # The upstream closed an idle connection: never hand it out again.
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _readable(transport: asyncio.Transport) -> bool:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        return readable(sock.fileno())
    except (OSError, ValueError):
        return True  # a socket that cannot be asked is not one to send a request on
