"""Keeping the hosts' snapshot current: health checks, model lists, and the merged listings built from them.

Every `health_interval` each host gets GET / and GET /api/ps over its own
keep-alive pool (its /api/tags every 12th round, when it comes back up, and
after a 404 for a model its list held).  Checks go to the configured hosts
and nowhere else.  A listing request refreshes whatever part of the
snapshot is older than the interval, so a merged answer is never older
than that, and most are built without a round trip.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..decisions.listing_reader import ListingError, ListingReader
from ..decisions.listings import merge_ps, merge_tags, v1_models_from_tags
from ..wire.errors import BadGateway, GuardError
from .failures import ConnectRefused, UpstreamGone
from .hosts import HostSet, Member, NoUpstream
from .pool import may_send_again
from .relay import MAX_RESPONSE_HEAD
from .sinks import Collector

log = logging.getLogger("guardproxy")

TAGS_EVERY = 12                  # rounds between two /api/tags of a host that stays up
MAX_LISTING = 8 * 1024 * 1024    # an /api/tags answer is a few KiB; this is a generous cap
MAX_ROOT = 64 * 1024             # GET / is "Ollama is running"
TAGS, PS = b"/api/tags", b"/api/ps"


async def fetch(member: Member, path: bytes, timeout: float, limit: int = MAX_LISTING) -> tuple[int, bytes]:
    """GET `path` from one host over its pool: the status and the (de-chunked) body of at most
    `limit` bytes, within `timeout`."""
    async with asyncio.timeout(timeout):
        return await _fetch(member, path, timeout, limit)


async def _fetch(member: Member, path: bytes, timeout: float, limit: int) -> tuple[int, bytes]:
    pool = member.pool
    head = b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n\r\n" % (path, member.authority)
    for fresh in (False, True):
        conn = await pool.acquire(fresh=fresh)
        sink = Collector(limit + MAX_RESPONSE_HEAD, BadGateway("upstream answer too large"))
        result = conn.begin(sink, head_request=False, keep_alive=True, read_timeout=timeout,
                            first_byte_timeout=timeout)
        assert conn.transport is not None
        conn.transport.write(head)
        try:
            reusable = await result
        except UpstreamGone as exc:
            if fresh or not may_send_again(conn, exc, read=True, streamed=False):  # (GET /, a list)
                raise
            continue  # a pooled connection the host had just closed
        except BaseException:
            conn.close()  # cancelled (the timeout): nobody will read the rest of this answer
            raise
        if reusable:
            pool.release(conn)
        else:
            conn.close()
        assert sink.response is not None
        return sink.response.status, sink.body(limit)
    raise AssertionError("unreachable")


async def read_entries(body: bytes, field: str = "models") -> list[dict[str, Any]]:
    """The entries of a host's list, read within bounds a slice at a time (ListingError if it is
    unreadable): a list of megabytes costs the loop no more than a millisecond at a time."""
    reader = ListingReader(body, field)
    while not reader.step():
        await asyncio.sleep(0)
    return reader.entries


async def _take(hosts: HostSet, member: Member, path: bytes) -> None:
    """Fetch one list (/api/tags or /api/ps) of one host into the snapshot."""
    status, body = await fetch(member, path, hosts.check_timeout)
    if status != 200:
        raise BadGateway(f"{path.decode()} answered {status}")
    entries = await read_entries(body)
    if path == TAGS:
        changed = member.host.set_tags(entries)
        member.tags_at, member.tags_due = hosts.clock(), False
    else:
        changed = member.host.set_ps(entries)
        member.ps_at = hosts.clock()
    if changed:   # (most rounds change nothing: what was built from the snapshot stays)
        hosts.snapshot_changed()


async def _shared_take(hosts: HostSet, member: Member, path: bytes) -> None:
    """Fetch one list of one host; whoever asks while a fetch is under way shares it."""
    running = member.refreshing.get(path)
    if running is None:
        running = member.refreshing[path] = asyncio.ensure_future(_take(hosts, member, path))
        running.add_done_callback(lambda f: _refreshed(member, path, f))
    await asyncio.shield(running)


async def refresh(hosts: HostSet, member: Member, path: bytes) -> None:
    """Fetch one list of one host, shared with whoever asks meanwhile.  Never raises."""
    try:
        await _shared_take(hosts, member, path)
    except (GuardError, OSError, ValueError, AttributeError):
        pass  # the previous snapshot stays; the health checks say whether the host is up


def _refreshed(member: Member, path: bytes, fut: "asyncio.Future[None]") -> None:
    member.refreshing.pop(path, None)
    if not fut.cancelled():
        fut.exception()  # (seen here, so an unawaited failure is not reported as lost)


async def listing(hosts: HostSet, path: bytes) -> bytes:
    """The merged /api/tags, /v1/models or /api/ps body of the hosts that are up (503 if none is)."""
    members = [m for m in hosts.members.values() if m.host.up]
    if not members:
        raise NoUpstream()
    kind = PS if path == PS else TAGS
    oldest = hosts.clock() - hosts.routing.health_interval
    stale = [m for m in members if (m.ps_at < oldest if kind == PS else m.tags_at < oldest or m.tags_due)]
    if stale:
        await asyncio.gather(*(refresh(hosts, m, kind) for m in stale))
    cached = hosts.listings.get(path)
    if cached is not None:
        return cached
    if kind == PS:
        doc: dict[str, Any] = {"models": merge_ps((m.name, m.host.ps) for m in members)}
    elif path == TAGS:
        doc = {"models": merge_tags(m.host.tags for m in members)}
    else:
        doc = {"object": "list", "data": v1_models_from_tags(merge_tags(m.host.tags for m in members))}
    body = hosts.listings[path] = json.dumps(doc, separators=(",", ":")).encode()
    return body


class HealthChecker:
    """The periodic checks of every host; `rounds` counts the rounds done."""

    def __init__(self, hosts: HostSet) -> None:
        self.hosts = hosts
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None
        self._round_done = asyncio.Event()
        self._unreadable: dict[str, str] = {}  # host name -> why its last list could not be read

    def apply(self) -> None:
        """Start or stop with the (reloaded) interval; a running loop reads the new interval itself."""
        if self.hosts.checks_on and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif not self.hosts.checks_on and self._task is not None:
            self.stop()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def next_round(self, rounds: int = 1) -> None:
        """Wait until `rounds` more rounds have ended."""
        target = self.rounds + rounds
        while self.rounds < target:
            await self._round_done.wait()

    async def _run(self) -> None:
        while True:
            members = list(self.hosts.members.values())
            try:
                await asyncio.gather(*(self.check(m, self.rounds) for m in members))
            except Exception:  # a bug must cost a round, never the checks
                log.exception("guardproxy: health check failed")
            self.rounds += 1
            done, self._round_done = self._round_done, asyncio.Event()
            done.set()
            await asyncio.sleep(self.hosts.routing.health_interval)

    async def check(self, member: Member, round_no: int) -> None:
        """One round for one host: GET / and its /api/ps; its /api/tags when due.

        A list that cannot be read (malformed, nested too deeply, too many entries) fails
        the check, with one log line while it stays unreadable.
        """
        hosts, host = self.hosts, member.host
        refused = False
        # (a host that is down has its list read too: one whose list is unreadable stays down)
        with_tags = member.tags_due or round_no % TAGS_EVERY == 0 or not host.up
        if with_tags:
            member.tags_due = True  # until a list is taken: one that fails is asked for again next round
        try:
            status, _ = await fetch(member, b"/", hosts.check_timeout, MAX_ROOT)
            ok = status == 200
            if ok:
                await _take(hosts, member, PS)
                if with_tags:
                    await _shared_take(hosts, member, TAGS)
            self._unreadable.pop(member.name, None)
        except ConnectRefused:
            ok, refused = False, True
        except ListingError as exc:
            ok = False
            if self._unreadable.get(member.name) != str(exc):
                self._unreadable[member.name] = str(exc)
                log.warning("guardproxy: host %s sent a list it cannot read (%s): check failed", member.name, exc)
        except (GuardError, OSError, ValueError, AttributeError):
            ok = False
        if host.health_check(ok, refused=refused):
            hosts.went(member, "connection refused" if refused else "its health checks failed")
            hosts.snapshot_changed()
            if host.up:
                if not with_tags:
                    member.tags_due = True  # back up: its models may have changed meanwhile
                hosts.wake()
        if ok and host.up and member.tags_due:
            await refresh(hosts, member, TAGS)
