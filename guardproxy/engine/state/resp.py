"""A lean Redis client for the request path: RESP2 over one pipelined connection, parsed by hiredis.

Calls from concurrent requests leave in one transport write per event-loop turn and their
replies come back in order, so one connection serves every caller.  benchmarks/redis_client.py
measured it against redis-py's asyncio client (its docstring has the numbers): with 32 concurrent
callers ~5 µs of client CPU per EVALSHA against redis-py's 41-59, with one caller ~48 against 98-130.

Rules, because a call on the request path has a hard deadline (`op_timeout`):
- a call never waits past its timeout.  Its reply is still owed and still matched to it (and
  dropped) when it comes, so a late reply shifts nothing; until it comes, calls fail at once
  rather than queue behind it.  A connection whose owed reply is later than its back-off step
  (grace) is dropped: so a slow but working Redis (a far site) is not reconnected to on every
  miss, and a connection is dropped at most once per back-off step;
- without a connection a call fails at once: nothing queues, nothing is retried behind the caller;
- connects back off exponentially with jitter (50 ms to 5 s), after a failed connect and after a
  connection that dropped soon after it was made; a connection that served a while reconnects
  after the shortest step;
- READONLY, LOADING, MASTERDOWN and NOREPLICAS mean this is no longer a writable primary (a
  failover): the connection is dropped and made again, through Sentinel when configured, which
  names the primary anew each time;
- a fresh connection counts as up only once INFO says it is a writable primary of Redis 7 or
  later, not a cluster node, and the scripts are loaded (SCRIPT LOAD; a script cached by EVAL alone
  may be evicted).  The one second attempt is SCRIPT LOAD + EVALSHA after NOSCRIPT (a restarted
  or flushed server), pipelined, within the same deadline.
Pub/sub needs a connection of its own in RESP2: `RedisSubscriber` (pubsub.py).
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
from collections import deque
from typing import Any, Callable, Iterable, Self, cast

import hiredis

from guardproxy.config.redis_url import CLUSTER_REFUSED, RedisAddress
from .commands import Arg, Reply, Script, encode, pack

StateCallback = Callable[[bool, "BaseException | None"], None]

_TICK = 0.001   # uvloop's clock counts milliseconds: its timers may ring up to half of one early

class RedisError(Exception):
    """Anything that went wrong talking to Redis."""


class RedisUnavailable(RedisError):
    """No answer to rely on: not connected, connection lost, too many calls in flight, or too slow."""


class RedisTimeout(RedisUnavailable):
    """The call's deadline passed; the connection it used has been dropped."""


class RedisReplyError(RedisError):
    """Redis answered with an error reply (a script error, WRONGTYPE, WRONGPASS, ...)."""


class RedisRefused(RedisError):
    """This server cannot serve us as it is (a replica, a cluster node, too old, an ACL that forbids
    what we need): connecting again soon would not help, so the back-off goes to its longest step."""


# Error replies that mean the server is no longer (or not yet) a writable primary: a failover.
NOT_PRIMARY = ("READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS")
SENTINEL_POLL = 1.0    # seconds between asking the Sentinels whether the primary moved
MIN_VERSION = (7, 0)   # script flags (#!lua), which make Redis refuse a writing script whole under OOM


def report(loop: asyncio.AbstractEventLoop, what: str, fn: Callable[..., None], *args: Any) -> None:
    """Run a caller's callback; a bug in it must not take down a connection or the reconnect loop."""
    try:
        fn(*args)
    except Exception as exc:
        loop.call_exception_handler({"message": f"Redis {what} callback failed", "exception": exc})


class Connection(asyncio.Protocol):
    """One socket: commands out in one write per loop turn, replies matched to futures in order.

    Deadlines share one alarm per connection instead of a timer per call: an asyncio.timeout
    around each call cost ~4.5 µs of the ~9 µs per call with 32 callers (uvloop).  The alarm is
    set for the earliest deadline in flight; when it rings with a reply still owed past its
    deadline, the connection is dropped, which fails every call on it at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_push: Callable[[Reply], None],
                 on_fail: Callable[[Connection], None]) -> None:
        self._loop = loop
        self._on_push = on_push
        self._on_fail = on_fail
        self._reader = hiredis.Reader(replyError=RedisReplyError)
        self.pending: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self.time = loop.time
        self._alarm: asyncio.TimerHandle | None = None
        self._alarm_at = math.inf
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.error: RedisUnavailable | None = None
        self.closed = asyncio.Event()
        self.grace = 0.05   # a reply owed this long past its call's deadline: the connection is dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(self, packed: bytes, deadline: float = math.inf) -> asyncio.Future[Reply]:
        """`deadline` on the loop's clock; past it without a reply, the connection is dropped."""
        if self.error is not None:
            raise type(self.error)(*self.error.args)
        fut: asyncio.Future[Reply] = self._loop.create_future()
        self.pending.append((fut, deadline))
        if deadline < self._alarm_at:
            self._set_alarm(deadline)
        self.send_only(packed)
        return fut

    def send_only(self, packed: bytes) -> None:
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(packed)

    def _flush(self) -> None:
        out = self._out
        if out and self.error is None and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self.pending
        try:
            while (reply := reader.gets()) is not False:
                if isinstance(reply, RedisReplyError) and str(reply).startswith(NOT_PRIMARY):
                    self.abort(RedisUnavailable(f"Redis is not a writable primary now ({reply}); reconnecting"))
                    return
                if pending:
                    fut = pending.popleft()[0]
                    if fut.done():         # its caller gave up (timeout, cancelled); the reply is dropped
                        continue
                    if isinstance(reply, RedisReplyError):
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)
                else:
                    self._on_push(reply)
        except hiredis.ProtocolError as exc:
            self.abort(RedisUnavailable(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(f"connection to Redis lost: {exc}" if exc else "Redis closed the connection"))
        self.closed.set()

    def abort(self, error: RedisUnavailable) -> None:
        """Fail every call in flight at once; connection_lost follows on a later loop turn."""
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: RedisUnavailable) -> None:
        if self.error is None:
            self.error = error
            self._on_fail(self)
            if self._alarm is not None:
                self._alarm.cancel()
        while self.pending:
            fut = self.pending.popleft()[0]
            if not fut.done():
                fut.set_exception(type(self.error)(*self.error.args))

    def _set_alarm(self, when: float) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm_at = when
        self._alarm = self._loop.call_at(when, self._ring)

    def _ring(self) -> None:
        """Fail the calls past their deadline; drop the connection once a reply is `grace` later still."""
        self._alarm, self._alarm_at = None, math.inf
        now = self._loop.time() + _TICK
        earliest = math.inf
        grace = self.grace
        for fut, deadline in self.pending:
            if deadline + grace <= now:
                self.abort(RedisTimeout(f"no answer from Redis {grace:g} s past a call's deadline; "
                                        "connection dropped"))
                return
            if not fut.done():
                if deadline <= now:
                    fut.set_exception(RedisTimeout("no answer from Redis in time"))
                else:
                    earliest = min(earliest, deadline)
            earliest = min(earliest, deadline + grace)
        if earliest < math.inf:
            self._set_alarm(earliest)


class Link:
    """A connection kept up in the background: connect (through Sentinel when configured), AUTH,
    SELECT, check the server; when lost, again with back-off."""

    def __init__(self, address: RedisAddress, *, connect_timeout: float = 1.0,
                 backoff: tuple[float, float] = (0.05, 5.0), ssl_context: ssl.SSLContext | None = None,
                 on_state: StateCallback | None = None) -> None:
        self.address = address
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._ssl = (ssl_context or tls_context(address)) if address.tls else None
        self._on_state = on_state
        self._conn: Connection | None = None
        self._up = asyncio.Event()
        self._was_up: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._sentinel = 0          # the Sentinel that answered last is asked first
        self.primary: tuple[str, int] | None = None   # where the current connection goes
        self.last_error: BaseException | None = None  # why the last connect failed, or the last connection ended
        self.failed_connects = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.error is None

    def start(self) -> None:
        """Connect in the background; `on_state(up, error)` hears of each change, once."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep_connected())

    async def wait_connected(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        first, longest = self._backoff
        step = first
        while True:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    conn = await self._open(loop, step)
            except (OSError, TimeoutError, RedisError) as exc:
                self.last_error = exc
                self.failed_connects += 1
                self._changed(loop, False, exc)
                if isinstance(exc, RedisRefused):
                    step = longest
                await asyncio.sleep(step * random.uniform(0.5, 1.0))
                step = min(step * 2, longest)
                continue
            since = loop.time()
            self._conn = conn
            self._up.set()
            self._changed(loop, True, None)
            try:
                await self._watch(conn)
            finally:
                conn.abort(RedisUnavailable("Redis client closed"))
            self.last_error = conn.error
            self._changed(loop, False, conn.error)
            # A connection that served a while reconnects after the shortest step; one that
            # dropped soon after it was made (a timeout, a failover) backs off further.
            step = first if loop.time() - since >= longest else min(step * 2, longest)
            await asyncio.sleep(step * random.uniform(0.5, 1.0))

    async def _where(self) -> tuple[str, int]:
        """The primary's address: the URL's, or the one a Sentinel names now."""
        a = self.address
        if not a.sentinels:
            return a.host, a.port
        problems = []
        n = len(a.sentinels)
        for i in range(n):
            k = (self._sentinel + i) % n
            host, port = a.sentinels[k]
            try:
                async with asyncio.timeout(self._connect_timeout / n):
                    reply = await ask_once(host, port, (b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", a.sentinel_master),
                                           self._ssl, a.tls_server_name or host)
            except (OSError, TimeoutError, RedisError, hiredis.ProtocolError) as exc:
                problems.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            if isinstance(reply, list) and len(reply) == 2 and all(isinstance(x, bytes) for x in reply):
                self._sentinel = k
                return cast(bytes, reply[0]).decode(), int(cast(bytes, reply[1]))
            problems.append(f"{host}:{port}: no primary named {a.sentinel_master!r}")
        raise RedisUnavailable("no Sentinel named the primary (" + "; ".join(problems) + ")")

    async def _open(self, loop: asyncio.AbstractEventLoop, grace: float) -> Connection:
        a = self.address
        host, port = await self._where()
        _, conn = await loop.create_connection(lambda: Connection(loop, self._on_push, self._failed),
                                               host, port, ssl=self._ssl,
                                               server_hostname=(a.tls_server_name or host) if self._ssl else None)
        conn.grace = grace
        try:
            hello = []
            if a.password is not None:
                auth = ("AUTH", a.username, a.password) if a.username else ("AUTH", a.password)
                hello.append(conn.send(pack(auth)))
            if a.db:
                hello.append(conn.send(pack(("SELECT", a.db))))
            hello.append(conn.send(pack((b"INFO",))))   # up means answering, and being a primary we can use
            replies = await asyncio.gather(*hello)
            check_server(replies[-1], host, port)
            await self._ready(conn)
        except RedisReplyError as exc:
            conn.abort(RedisUnavailable("Redis handshake failed"))
            if str(exc).startswith("NOPERM"):
                raise RedisRefused(f"{exc} (the gate's Redis user needs the commands, keys and channel "
                                   "its ACL lists: see docs/hosts-and-redis.md)") from None
            if str(exc).startswith(("WRONGPASS", "NOAUTH")):
                raise RedisRefused(f"{exc} (check the user and password of the Redis URL)") from None
            raise
        except BaseException:
            conn.abort(RedisUnavailable("Redis handshake failed"))
            raise
        self.primary = (host, port)
        return conn

    def _failed(self, conn: Connection) -> None:
        """At once, not a loop turn later, so no caller picks a connection that is going away."""
        if self._conn is conn:
            self._conn = None
            self._up.clear()

    def _changed(self, loop: asyncio.AbstractEventLoop, up: bool, error: BaseException | None) -> None:
        if up != self._was_up:
            self._was_up = up
            if self._on_state is not None:
                report(loop, "state", self._on_state, up, error)

    async def _ready(self, conn: Connection) -> None:
        """What a fresh connection does before it counts as up."""

    async def _watch(self, conn: Connection) -> None:
        """Until the connection closes; with Sentinels, ask them every SENTINEL_POLL whether the primary moved.

        A forced or managed failover may leave the old primary writable for a while (a Sentinel
        turns it into a replica only at its next check, up to 10 s later): what is written there
        meanwhile is lost, so the gate follows the Sentinels, not the old primary's replies.
        """
        while not conn.closed.is_set():
            try:
                async with asyncio.timeout(SENTINEL_POLL if self.address.sentinels else None):
                    await conn.closed.wait()
            except TimeoutError:
                try:
                    where = await self._where()
                except RedisUnavailable:
                    continue   # no Sentinel answered: keep what works
                if where != self.primary:
                    conn.abort(RedisUnavailable(f"the Sentinels name a new primary, {where[0]}:{where[1]}"))

    def _on_push(self, reply: Reply) -> None:
        raise hiredis.ProtocolError("a reply to no request")


def tls_context(address: RedisAddress) -> ssl.SSLContext:
    """rediss://: the system's CAs, or only tls_ca's; a client certificate when tls_cert is set."""
    ctx = ssl.create_default_context(cafile=address.tls_ca)
    if address.tls_cert:
        ctx.load_cert_chain(address.tls_cert, address.tls_key)
    return ctx


def info_fields(info: Reply) -> dict[str, str]:
    if not isinstance(info, bytes):
        raise RedisUnavailable(f"unexpected reply to INFO: {info!r:.100}")
    fields = {}
    for line in info.decode(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name] = value.strip()
    return fields


def check_server(info: Reply, host: str, port: int) -> None:
    """The server must be a writable primary of Redis 7 or later (or Valkey), not a cluster node."""
    f = info_fields(info)
    where = f"{host}:{port}"
    if f.get("cluster_enabled") == "1":
        raise RedisRefused(f"{where} is a Redis Cluster node. {CLUSTER_REFUSED}")
    version = f.get("redis_version", "")
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        major_minor = ()
    if major_minor < MIN_VERSION:
        raise RedisRefused(f"{where} runs Redis {version or '(unknown version)'}; guardproxy needs Redis "
                           f"{'.'.join(map(str, MIN_VERSION))} or later, or Valkey")
    if f.get("role", "master") != "master":
        raise RedisUnavailable(f"{where} is a replica, not the primary")
    if f.get("loading") == "1":
        raise RedisUnavailable(f"{where} is loading its data set")


async def ask_once(host: str, port: int, command: tuple[Arg, ...], tls: ssl.SSLContext | None,
                   server_name: str) -> Reply:
    """One command on a connection of its own (a Sentinel's answer); the caller bounds the time."""
    reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=server_name if tls else None)
    try:
        writer.write(pack(command))
        parser = hiredis.Reader(replyError=RedisReplyError)
        while (reply := parser.gets()) is False:
            data = await reader.read(65536)
            if not data:
                raise RedisUnavailable("closed the connection")
            parser.feed(data)
        if isinstance(reply, RedisReplyError):
            raise reply
        return cast(Reply, reply)
    finally:
        writer.close()


class RedisClient(Link):
    """Commands and scripts, each call bounded by a timeout (default `timeout`, the `op_timeout`)."""

    def __init__(self, address: RedisAddress, *, timeout: float = 0.05, max_pending: int = 10_000,
                 connect_timeout: float = 1.0, backoff: tuple[float, float] = (0.05, 5.0),
                 ssl_context: ssl.SSLContext | None = None, on_state: StateCallback | None = None,
                 scripts: Iterable[Script] = ()) -> None:
        super().__init__(address, connect_timeout=connect_timeout, backoff=backoff,
                         ssl_context=ssl_context, on_state=on_state)
        self.timeout = timeout
        self.max_pending = max_pending
        self.scripts = tuple(scripts)   # loaded at each connect

    async def _ready(self, conn: Connection) -> None:
        """SCRIPT LOAD every script, so EVALSHA finds it (EVAL's cache may be evicted, Redis 7.4)."""
        shas = await asyncio.gather(*(conn.send(_load(s)) for s in self.scripts))
        for script, sha in zip(self.scripts, shas):
            if sha != script.sha:
                raise RedisUnavailable(f"SCRIPT LOAD answered {sha!r:.60}, not the script's SHA1")

    async def call(self, *args: Arg, timeout: float | None = None) -> Reply:
        """One command.  Not for those that change what the connection is (SELECT, SUBSCRIBE, MULTI, ...)."""
        return await self._roundtrip(pack(args), timeout)

    async def evalsha(self, script: Script, keys: Iterable[Arg] = (), args: Iterable[Arg] = (),
                      *, timeout: float | None = None) -> Reply:
        """Run a script by its SHA1; after NOSCRIPT, load it and run it again."""
        keys = tuple(keys)
        tail = (len(keys), *keys, *args)
        return await self.evalsha_encoded(script, len(tail), encode(tail), timeout=timeout)

    async def evalsha_encoded(self, script: Script, count: int, tail: bytes, *, timeout: float | None = None) -> Reply:
        """`evalsha` with numkeys, keys and args already encoded (`count` items in `tail`, see `encode`).

        The request path encodes what does not change between requests once: packing two
        dozen arguments anew cost ~3 µs a call.
        """
        conn = self._ready_connection()
        deadline = conn.time() + (self.timeout if timeout is None else timeout)
        try:
            return await conn.send(script.evalsha(count, tail), deadline)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await _load_and_run(conn, script, count, tail, deadline)

    def evalsha_nowait(self, script: Script, count: int, tail: bytes, *,
                       on_error: Callable[[RedisError], None], timeout: float | None = None) -> None:
        """`evalsha_encoded` whose reply nobody waits for (the request it ends is over); a failure goes to `on_error`.

        No task per call: the reply's future gets a callback, which sends the script whole after
        NOSCRIPT, within the same deadline.
        """
        try:
            conn = self._ready_connection()
        except RedisUnavailable as lost:
            on_error(lost)
            return
        deadline = conn.time() + (self.timeout if timeout is None else timeout)

        def done(fut: asyncio.Future[Reply], retry: bool = True) -> None:
            exc = None if fut.cancelled() else fut.exception()
            if exc is None:
                return
            if retry and isinstance(exc, RedisReplyError) and str(exc).startswith("NOSCRIPT"):
                try:
                    again = _load_and_run(conn, script, count, tail, deadline)
                except RedisUnavailable as lost:
                    on_error(lost)
                else:
                    again.add_done_callback(lambda f: done(f, False))
                return
            on_error(exc if isinstance(exc, RedisError) else RedisUnavailable(str(exc)))

        try:
            fut = conn.send(script.evalsha(count, tail), deadline)
        except RedisUnavailable as lost:
            on_error(lost)
            return
        fut.add_done_callback(done)

    async def publish(self, channel: Arg, message: Arg, *, timeout: float | None = None) -> int:
        """Returns how many subscribers got it."""
        return cast(int, await self.call(b"PUBLISH", channel, message, timeout=timeout))

    def _ready_connection(self) -> Connection:
        conn = self._conn
        if conn is None:
            raise RedisUnavailable("not connected to Redis")
        pending = conn.pending
        if pending:
            if len(pending) >= self.max_pending:
                raise RedisUnavailable(f"{len(pending)} Redis calls already in flight")
            if pending[0][1] <= conn.time():   # a call now would wait behind a reply already late
                raise RedisUnavailable("Redis is late with a reply; not waiting behind it")
        return conn

    async def _roundtrip(self, packed: bytes, timeout: float | None) -> Reply:
        conn = self._ready_connection()
        return await conn.send(packed, conn.time() + (self.timeout if timeout is None else timeout))


def _load(script: Script) -> bytes:
    return pack((b"SCRIPT", b"LOAD", script.source))


def _load_and_run(conn: Connection, script: Script, count: int, tail: bytes, deadline: float) -> asyncio.Future[Reply]:
    """SCRIPT LOAD and EVALSHA again, in one write: the EVALSHA's reply is the one that counts."""
    loaded = conn.send(_load(script), deadline)
    loaded.add_done_callback(_retrieved)
    return conn.send(script.evalsha(count, tail), deadline)


def _retrieved(fut: asyncio.Future[Reply]) -> None:
    """A reply only its successor's tells about (a failed SCRIPT LOAD makes EVALSHA answer NOSCRIPT)."""
    if not fut.cancelled():
        fut.exception()
