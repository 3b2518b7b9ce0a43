"""The listener: accepting connections, counting them against the caps, the
per-connection loop over requests, live config, and a graceful stop.

Each request is an Exchange (exchange.py); this module never looks inside one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import replace
from typing import Any

from ..config.model import Config
from ..decisions import routes
from ..decisions.auth import KeyRing
from ..decisions.limits import address_bucket
from ..decisions.policy import Policies
from ..wire.errors import GuardError, ServiceUnavailable, render
from ..wire.heads import new_request_id
from .accesslog import AccessLog, LogRecord
from .client import ClientConnection
from .exchange import Exchange
from .failures import ClientGone
from .health import HealthChecker
from .hosts import HostSet
from .listed_models import ListedModels
from .metrics import Gauges, Metrics, UpstreamState
from .metrics_listener import MetricsListener
from .state.backends import open_state
from .tls import CertReloader, PlainAcceptor

log = logging.getLogger("guardproxy")

# The settings a running server keeps until a restart (its sockets, its log file, its shared
# state, its TLS set-up), each with its name in the file, which a reload's log line gives.
RESTART_ONLY = (("listen_host", "listen"), ("listen_port", "listen"), ("access_log", "log.access"),
                ("metrics", "metrics.listen"), ("tls", "tls"), ("cluster", "cluster"))


class ListenError(OSError):
    """The metrics listener's address could not be taken (the main one raises the OSError itself)."""

    def __init__(self, address: str, err: OSError) -> None:
        super().__init__(err.errno, f"cannot listen on {address}: {err.strerror or err}")
        self.address = address


class GuardServer:
    def __init__(self, config: Config, *, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.keys = KeyRing(config.keys)
        self.policies = Policies(config)
        self.state = open_state(config, self.policies)  # limits: in this process, or shared ([cluster])
        self.clock = time.monotonic  # rate and ban decisions; tests put a fake clock here
        self.hosts = HostSet(config)  # the Ollama hosts: pools, routing, health (also read by the metrics)
        self.health = HealthChecker(self.hosts)
        self.access_log = access_log if access_log is not None else AccessLog(config.access_log)
        self.listed = ListedModels(self.hosts)
        self.metrics = Metrics(self.hosts.models)  # a `model` label is a name some host lists
        self.metrics_listener: MetricsListener | None = None
        self.connections: set[ClientConnection] = set()
        self.per_ip: dict[str, int] = {}
        self.tls = CertReloader(config.tls) if config.tls is not None else None
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._acceptor: PlainAcceptor | None = None      # the listener with [tls]
        self._handshakes: set[asyncio.Task[None]] = set()
        # Requests in progress; `_idle_event` is set while there are none, which
        # is what a graceful stop waits for.  (A connection's own `idle` means it
        # waits for a next request head, and such connections are closed at once.)
        self._active = 0
        self._idle_event = asyncio.Event()
        self._idle_event.set()

    @property
    def write_timeout(self) -> float:
        return self.config.timeouts.write

    @property
    def scheme(self) -> bytes:
        """X-Forwarded-Proto for the upstream."""
        return b"https" if self.tls is not None else b"http"

    async def scrape(self) -> bytes:
        """The metrics as Prometheus reads them."""
        await self.listed.ready()
        hosts = tuple(UpstreamState(m.name, self.listed.up(m), m.host.in_flight) for m in self.hosts.members.values())
        waiting = self.state.waiting() + self.hosts.waiting.queued
        return self.metrics.exposition(Gauges(len(self.connections), waiting, hosts,
                                              self.state.errors, self.state.fallbacks,
                                              self.access_log.write_errors))

    def apply_config(self, config: Config) -> None:
        """Take a reloaded config: keys, CORS, limits, timeouts, hosts.  Running streams keep going.

        The RESTART_ONLY settings stay as they are.
        """
        config = replace(config, **{field: getattr(self.config, field) for field, _ in RESTART_ONLY})
        self.keys = KeyRing(config.keys)
        self.state.apply(config)
        self.hosts.apply(config)
        if self._server is not None or self._acceptor is not None:
            self.health.apply()
        self.config = config
        if self.tls is not None:
            # A reload (certbot's deploy hook sending SIGHUP, say) takes renewed
            # certificate files at once instead of at the next periodic look.
            self.tls.reload_if_changed()

    async def start(self) -> None:
        """Listen (an OSError if the listen address cannot be taken, ListenError for metrics.listen)."""
        await self.state.start()
        if self.tls is None:
            self._server = await self.loop.create_server(
                lambda: ClientConnection(self), self.config.listen_host, self.config.listen_port,
                backlog=1024, reuse_address=True)
        else:
            self._acceptor = await PlainAcceptor.listen(self.loop, self.config.listen_host,
                                                        self.config.listen_port, self._accept_tls)
        if self.tls is not None:
            self.tls.start(self.loop)
        self.health.apply()
        if self.config.metrics.listen is not None:
            listener = MetricsListener(self.scrape)
            try:
                await listener.start(*self.config.metrics.listen)
            except OSError as e:
                await self.stop(0)
                raise ListenError("{}:{} (metrics.listen)".format(*self.config.metrics.listen), e) from None
            self.metrics_listener = listener

    def admit(self, conn: ClientConnection) -> GuardError | None:
        """Count a new connection, or say which cap it is over."""
        limits = self.config.server
        if len(self.connections) >= limits.max_connections:
            return ServiceUnavailable("too many connections")
        key = conn.address_key = address_bucket(conn.peer_ip)
        n = self.per_ip.get(key, 0)
        if n >= limits.max_connections_per_ip:
            return ServiceUnavailable("too many connections from your address")
        self.per_ip[key] = n + 1
        conn.counted = True
        self.connections.add(conn)
        return None

    def _accept_tls(self, sock: socket.socket, addr: Any) -> None:
        """A TLS connection is counted before its handshake, then handed to the handshake."""
        conn = ClientConnection(self)
        conn.peer_ip = addr[0] if isinstance(addr, tuple) else "unknown"
        refusal = self.admit(conn)
        if refusal is not None:
            sock.close()  # no plain-text answer can reach a TLS client
            self.log_refusal(conn, refusal, 0)
            return
        task = self.loop.create_task(self._handshake(conn, sock))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: ClientConnection, sock: socket.socket) -> None:
        assert self.tls is not None
        try:
            # A client that never finishes the handshake gets the same deadline
            # as one that never finishes its head.
            await self.loop.connect_accepted_socket(lambda: conn, sock, ssl=self.tls.context,
                                                    ssl_handshake_timeout=self.config.timeouts.header)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, asyncio.CancelledError):
            self.release(conn)
            sock.close()

    def release(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if conn.counted:
            conn.counted = False
            n = self.per_ip.get(conn.address_key, 1) - 1
            if n > 0:
                self.per_ip[conn.address_key] = n
            else:
                self.per_ip.pop(conn.address_key, None)

    @property
    def port(self) -> int:
        if self._acceptor is not None:
            return int(self._acceptor.socks[0].getsockname()[1])
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let running requests finish within the grace period, then close."""
        grace = self.config.timeouts.grace if grace is None else grace
        self.closing = True
        self.health.stop()
        if self.tls is not None:
            self.tls.stop()
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            self._acceptor.close()
        if self.metrics_listener is not None:
            self.metrics_listener.close()
        for task in list(self._handshakes):
            task.cancel()
        for conn in list(self.connections):
            if conn.idle and conn.transport is not None:
                conn.transport.close()
        try:
            async with asyncio.timeout(grace):
                await self._idle_event.wait()
        except TimeoutError:
            pass
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        tasks = [c.task for c in list(self.connections) if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self.hosts.close()
        if self._server is not None:
            await self._server.wait_closed()
        await self.state.close()
        self.access_log.flush()

    # --- the per-connection loop ---------------------------------------------------

    async def serve(self, conn: ClientConnection) -> None:
        t = self.config.timeouts
        first_wait = t.header
        try:
            while not conn.closed and not self.closing:
                head = await conn.read_head(first_wait, t.header, self.config.server.max_headers)
                if head is None:
                    break
                first_wait = t.keepalive
                self._active += 1
                self._idle_event.clear()
                try:
                    keep = await Exchange(self, conn, head).run()
                finally:
                    self._active -= 1
                    if not self._active:
                        self._idle_event.set()
                if not keep:
                    break
                await conn.drain()
        except GuardError as err:
            # A head that never completed (too big, bare LF, too slow): the
            # refusal is still answered and logged, without a method or path.
            conn.linger = True
            response = render(err, close=True)
            conn.send(response)
            self.log_refusal(conn, err, len(response))
        except ClientGone:
            pass
        except Exception as exc:  # a bug must cost one connection, never the server
            # One line; its traceback too at --log-level debug.
            log.error("internal error, one connection closed: %r", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            if conn.linger:
                conn.close_lingering()
            elif not conn.closed:
                conn.transport.close()

    def log_refusal(self, conn: ClientConnection, err: GuardError, bytes_out: int) -> None:
        """A refusal with no parsed request behind it (incomplete head, connection cap)."""
        record = LogRecord.new(conn.peer_ip, len(conn.buf))
        record.status, record.bytes_out, record.outcome, record.error = err.status, bytes_out, "refused", err.message
        self.metrics.refused(err)
        self.metrics.ended(record, routes.UNKNOWN, 0.0, 0.0)
        if not self.access_log.enabled:
            return
        record.ttfb_ms = 0.0  # answered at once, as every refusal (see Exchange.finish)
        record.request_id = new_request_id().decode()
        self.access_log.record(record)
