"""HTTPS on the listen port: one ssl.SSLContext, reloaded when its files change.

certbot and win-acme renew a certificate by writing new files in place; a
context that re-reads them when their modification time changes serves the
new certificate to every new connection without a restart.  Connections
already open keep the certificate they shook hands with.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any, Callable

from ..config.model import Tls
from .logs import log

CHECK_EVERY = 60.0  # seconds between looks at the certificate files


def server_context(tls: Tls) -> ssl.SSLContext:
    """TLS 1.2+ with the ssl module's modern defaults (ECDHE, AEAD ciphers)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # TLS 1.2 suites; TLS 1.3 ones are always on
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


class CertReloader:
    def __init__(self, tls: Tls) -> None:
        self.tls = tls
        self.context = server_context(tls)
        self._stamp = self._mtimes()
        self._task: asyncio.Task[None] | None = None

    def _mtimes(self) -> tuple[int, int]:
        try:
            return (os.stat(self.tls.cert).st_mtime_ns, os.stat(self.tls.key).st_mtime_ns)
        except OSError:
            return (0, 0)

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; a broken pair keeps the old certificate."""
        stamp = self._mtimes()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.context.load_cert_chain(self.tls.cert, self.tls.key)
        except (OSError, ssl.SSLError) as e:
            log.warning("tls: cannot reload %s: %s; keeping the old certificate", self.tls.cert, e)
            return False
        log.info("tls: reloaded %s", self.tls.cert)
        return True

    def start(self, loop: asyncio.AbstractEventLoop, every: float = CHECK_EVERY) -> None:
        self._task = loop.create_task(self._watch(every))

    async def _watch(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.reload_if_changed()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class PlainAcceptor:
    """Accepts plain TCP connections for the TLS listener.

    asyncio's `create_server(ssl=...)` hands a connection to guardproxy only
    once its handshake is done, so connections still in the handshake would
    escape the connection caps (a few thousand idle handshakes cost as many
    descriptors).  Accepting plain sockets here lets the server count each
    one first and only then start its handshake (loop.connect_accepted_socket).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, socks: list[socket.socket],
                 on_accept: Callable[[socket.socket, Any], None]) -> None:
        self.socks = socks
        self._tasks = [loop.create_task(self._accept(loop, s, on_accept)) for s in socks]

    @classmethod
    async def listen(cls, loop: asyncio.AbstractEventLoop, host: str, port: int,
                     on_accept: Callable[[socket.socket, Any], None], backlog: int = 1024) -> "PlainAcceptor":
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        socks: list[socket.socket] = []
        try:
            for family, kind, proto, _, addr in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                if os.name == "posix":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as create_server does
                sock.bind(addr)
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError:
            for s in socks:
                s.close()
            raise
        return cls(loop, socks, on_accept)

    @staticmethod
    async def _accept(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                      on_accept: Callable[[socket.socket, Any], None]) -> None:
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError:  # out of descriptors, a reset before accept: keep serving the others
                await asyncio.sleep(0.05)
                continue
            on_accept(conn, addr)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for sock in self.socks:
            sock.close()
