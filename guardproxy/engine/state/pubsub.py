"""Pub/sub on a connection of its own (RESP2 allows nothing else on a subscribed connection)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable, Iterable

from guardproxy.config.redis_url import RedisAddress
from .commands import Arg, Reply, pack
from .resp import Connection, Link, RedisReplyError, RedisUnavailable, StateCallback, report


class RedisSubscriber(Link):
    """SUBSCRIBE to fixed channels on a connection of its own; `on_message(channel, data)` per message.

    A message published while the connection is down is lost, so whoever waits for one also polls.
    A PING every `ping_interval` notices a server that stopped answering without closing the socket.
    """

    def __init__(self, address: RedisAddress, channels: Iterable[Arg],
                 on_message: Callable[[bytes, bytes], None], *, ping_interval: float = 5.0,
                 connect_timeout: float = 1.0, backoff: tuple[float, float] = (0.05, 5.0),
                 ssl_context: ssl.SSLContext | None = None, on_state: StateCallback | None = None) -> None:
        super().__init__(address, connect_timeout=connect_timeout, backoff=backoff,
                         ssl_context=ssl_context, on_state=on_state)
        self.channels = frozenset(c if isinstance(c, bytes) else str(c).encode() for c in channels)
        if not self.channels:
            raise ValueError("a subscriber needs at least one channel")
        self._on_message = on_message
        self._ping_interval = ping_interval
        self._confirmed: set[bytes] = set()
        self._subscribed: asyncio.Future[None] | None = None
        self._pong_due = False

    async def _ready(self, conn: Connection) -> None:
        self._confirmed = set()
        self._subscribed = asyncio.get_running_loop().create_future()
        conn.send_only(pack((b"SUBSCRIBE", *self.channels)))
        await self._subscribed

    async def _watch(self, conn: Connection) -> None:
        self._pong_due = False
        while not conn.closed.is_set():
            try:
                async with asyncio.timeout(self._ping_interval):
                    await conn.closed.wait()
            except TimeoutError:
                if self._pong_due:
                    conn.abort(RedisUnavailable("Redis stopped answering PING"))
                    return
                self._pong_due = True
                conn.send_only(pack((b"PING",)))

    def _on_push(self, reply: Reply) -> None:
        if isinstance(reply, RedisReplyError):   # SUBSCRIBE refused (NOPERM on the channel, ...)
            if self._subscribed is not None and not self._subscribed.done():
                self._subscribed.set_exception(reply)
            return
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            channel, data = reply[1], reply[2]
            if isinstance(channel, bytes) and isinstance(data, bytes):
                report(asyncio.get_running_loop(), "message", self._on_message, channel, data)
        elif kind == b"subscribe" and isinstance(reply[1], bytes):
            self._confirmed.add(reply[1])
            if self._confirmed >= self.channels and self._subscribed is not None and not self._subscribed.done():
                self._subscribed.set_result(None)
        elif kind == b"pong":
            self._pong_due = False
