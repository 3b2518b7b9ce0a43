"""The Ollama hosts behind the gate: their connections, their routing state, and who waits for room.

One Member per configured host holds its routing.Host (what `choose`
reads), its keep-alive pool, and when its model lists were last fetched.
The HostSet places each request (decisions.routing.choose), counts the
generations in flight per host, keeps the fair queue of generations waiting
(in process the one queue: a waiter goes when a host has room for it and its
`decide`, the state's slot and budget decision made again then, grants the
rest; admission.py), takes failures and answers into each host's breaker
and health, and applies a reloaded host list without touching running
exchanges.  health.py keeps the snapshot fresh.

Hosts are always a set: the single `upstream` is a set of one, placed by the
same code.  That one is never unavailable (decisions.routing.Hosts.alone, as
nginx's lone server): it is always tried, so a refused connection is its 502,
not a 503, and it has no max_concurrent of its own (UNCAPPED).  `several` says
the hosts were configured as [[upstreams]]: their model lists are merged, and
requests are routed by model.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Awaitable, Callable

from ..config.model import Config, UpstreamHost
from ..decisions import routing
from ..decisions.hostqueue import Admitted, TooManyWaiting, Waiting
from ..decisions.routes import UNKNOWN, Route
from ..decisions.routing import Failure, Host, Hosts, Request, Verdict, choose
from ..wire.errors import BadRequest, ServiceUnavailable
from . import logs
from .pool import UpstreamPool
from .slots import QueueTimeout, queue_full, wait_granted
from .state.base import NO_TICKET, Full, Ticket

UNCAPPED = 1 << 30  # max_concurrent of a single `upstream`: it has no cap of its own
HOLD = frozenset({429, 503})            # answers kept from the client while another host may take the request
HOLD_LISTED = frozenset({404, 429, 503})  # ... and a 404 from a host whose list held the model
NEVER = float("-inf")
_NO_HOLD: frozenset[int] = frozenset()
# Requests that name no host, and no model routing reads, by [admin_route][generation]: most to one host.
_PLAIN = tuple(tuple(Request(admin_route=admin, generation=gen) for gen in (False, True)) for admin in (False, True))


class UnknownHost(BadRequest):
    message = "X-Guardproxy-Upstream names no configured upstream"


class NoUpstream(ServiceUnavailable):
    message = "no upstream host is available; try again later"


class HostQueueTimeout(ServiceUnavailable):
    message = "every upstream host for this model is busy; try again later"


class Member:
    """One configured host: routing state, connections, and the age of its snapshot."""

    __slots__ = ("name", "settings", "host", "pool", "authority", "tags_at", "ps_at", "tags_due", "refreshing")

    def __init__(self, settings: UpstreamHost, connect_timeout: float, idle_timeout: float = 60.0) -> None:
        self.name = settings.name
        self.settings = settings
        self.host = Host(settings.name, settings.max_concurrent or UNCAPPED, settings.weight, settings.models)
        self.pool = UpstreamPool(settings.address, connect_timeout=connect_timeout, idle_timeout=idle_timeout)
        self.authority = self.pool.authority
        self.tags_at = NEVER   # clock time of the last /api/tags taken, and of the last /api/ps
        self.ps_at = NEVER
        self.tags_due = False  # a 404 for a model its list held: fetch /api/tags at the next chance
        self.refreshing: dict[bytes, asyncio.Future[None]] = {}  # fetches under way, shared by whoever asks

    def __repr__(self) -> str:
        return f"Member({self.name!r}, {self.settings.address.authority})"


class Waiter:
    """A generation in the queue: what it is woken with, and the rest of its decision."""

    __slots__ = ("future", "decide", "ticket", "by_state")

    def __init__(self, future: "asyncio.Future[Member]", decide: Callable[[], Ticket | Full], by_state: bool) -> None:
        self.future = future
        self.decide = decide      # its key's slot and budget, decided again when a host has room
        self.ticket = NO_TICKET   # what `decide` granted with the host
        self.by_state = by_state  # it last waited for its key's (or the global) slot, not for a host


class HostSet:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.hosts = Hosts(())
        self.several = False   # [[upstreams]]: listings merged, requests routed by model
        self.turn = 0
        self.waiting: Waiting[Waiter] = Waiting(config.limits.max_queue)
        # Merged answers built from the current snapshot, by path, and as keys with a model list see them.
        self.listings: dict[bytes | tuple[object, ...], bytes] = {}
        self._models: frozenset[str] | None = None  # models(), until the snapshot changes
        self._models_due = True                      # ... then worked out again
        self.apply(config)

    # --- configuration ---------------------------------------------------------

    def apply(self, config: Config) -> None:
        """Take a (reloaded) host list: hosts are added, changed in place, or removed.

        A host whose address changed is a new host.  A removed host's pool
        closes its idle connections at once; exchanges running on it keep
        their connection to the end and then close it.
        """
        self.routing = config.routing
        self.check_timeout = max(0.5, min(config.timeouts.connect, 5.0))
        self.waiting.max_queue = config.limits.max_queue
        old, members = self.members, {}
        for settings in config.hosts():
            m = old.get(settings.name)
            if m is None or m.settings.address != settings.address:
                m = Member(settings, config.timeouts.connect, config.timeouts.upstream_idle)
            else:
                if m.host.configure(settings.max_concurrent or UNCAPPED, settings.weight, settings.models):
                    m.tags_due = True
                m.settings = settings
                m.pool.connect_timeout = config.timeouts.connect
                m.pool.idle_timeout = config.timeouts.upstream_idle
            members[settings.name] = m
        for name, m in old.items():
            if members.get(name) is not m:
                m.pool.close()
        self.members = members
        self.hosts = Hosts([m.host for m in members.values()], lone=not config.upstreams)
        self.several = bool(config.upstreams)
        self.snapshot_changed()
        self.wake()  # more room, or new hosts, for whoever waits

    @property
    def checks_on(self) -> bool:
        return self.routing.health_interval > 0

    def close(self) -> None:
        for m in self.members.values():
            m.pool.close()

    # --- placing a request -------------------------------------------------------

    def first(self, route: Route, model: str | None, target: str | None) -> tuple[Member, Request]:
        """The host for a request that takes no slot (it never waits), and what routing knows of it
        (it goes with the exchange, for a failover).  Raises UnknownHost or NoUpstream."""
        wanted = self.request(route, model, target)
        choice = self._place(wanted)
        if isinstance(choice, Host):   # (the usual case, without a call more)
            return self.members[choice.name], wanted
        member = self._member(choice)
        assert member is not None, "only a generation waits for a host"
        return member, wanted

    def request(self, route: Route, model: str | None, target: str | None) -> Request:
        """What routing knows of a request: one made once when it names no host and no model, or a
        model no placement reads (a lone host's), since a Request is never changed."""
        admin = route.admin or route is UNKNOWN
        if target is None and (model is None or self.hosts.alone is not None):
            return _PLAIN[admin][route.generation]
        return Request(model=model, target=target, admin_route=admin, generation=route.generation)

    def place(self, wanted: Request) -> Member | None:
        """The best host for `wanted` with room now, its slot not taken (see `take`); None: every
        suitable host is full.  Raises UnknownHost or NoUpstream."""
        return self._member(self._place(wanted))

    def pick(self, route: Route, model: str | None, target: str | None) -> tuple[Member, Request]:
        """The host for a generation whose host slot is a shared lease ([cluster]): the best one
        now, full or not (the lease decides), its slot not taken here (see `take`)."""
        wanted = self.request(route, model, target)
        choice = self._place(wanted)
        if isinstance(choice, Host):   # (the usual case, without a call more)
            return self.members[choice.name], wanted
        if choice is Verdict.WAIT:  # full here: the least busy of the full ones, warm first
            choice = self._place(Request(wanted.model, target, wanted.admin_route, generation=False))
        member = self._member(choice)
        assert member is not None   # (a request that takes no slot is never told to wait)
        return member, wanted

    def take(self, member: Member) -> None:
        """A generation was granted `member` (its slot, or its shared lease): count it there."""
        member.host.in_flight += 1

    def _member(self, choice: Host | Verdict) -> Member | None:
        if isinstance(choice, Host):
            return self.members[choice.name]
        if choice is Verdict.WAIT:
            return None
        if choice is Verdict.NO_SUCH_HOST:
            raise UnknownHost()
        raise NoUpstream(headers=[("Retry-After", str(self._retry_after()))])

    async def wait(self, wanted: Request, key: str, timeout: float, gone: "asyncio.Future[None]", weight: float,
                   decide: Callable[[], Ticket | Full], undo: Callable[[Ticket], None], *,
                   by_state: bool = False) -> tuple[Member, Ticket]:
        """Wait, in fair order across keys (by their weights), for a host with room for `wanted` at a
        moment `decide` grants the rest (its key's slot, its budget); 503 after `timeout`.

        `decide` runs each time a host has room for it: a Ticket, a Full (it waits on), or a
        GuardError that refuses it.  `gone` is done when the client hangs up: its place is given up
        at once.  `by_state`: it waits for its key's slot, not for a host (which 503 it gets).
        """
        w = Waiter(asyncio.get_running_loop().create_future(), decide, by_state)
        try:
            self.waiting.enqueue(key, wanted, w, weight)
        except TooManyWaiting:
            if by_state:
                raise queue_full() from None
            raise HostQueueTimeout("too many requests are waiting for an upstream host",
                                   headers=[("Retry-After", "1")]) from None

        def give_up() -> None:
            # Leave the queue, or hand on what was granted in the same instant (or it is lost for good).
            fut = w.future
            if not self.waiting.cancel(key, w) and fut.done() and not fut.cancelled() and fut.exception() is None:
                undo(w.ticket)
                self.release(fut.result())

        try:
            await wait_granted(w.future, timeout, gone, give_up, HostQueueTimeout)
        except HostQueueTimeout:
            if w.by_state:
                raise QueueTimeout(headers=[("Retry-After", "1")]) from None
            raise
        return w.future.result(), w.ticket

    async def elsewhere(self, failed: Member, wanted: Request, move: Callable[[Member], Awaitable[bool]] | None = None
                        ) -> tuple[Member, Request] | None:
        """Another host for a request that failed on `failed` before its first byte, its slot moved there.

        `move`, for a generation whose host slot is a shared lease ([cluster]), takes the lease to a
        host if it has room at once: the other hosts are tried in routing's order, full here or not
        (the lease decides).  None: no host took it; the request's answer is the failed host's.
        """
        wanted = wanted.after(failed.host)
        if move is None:
            choice = self._place(wanted)
            if not isinstance(choice, Host):
                return None  # (a full host is not waited for: the client has waited once already)
            if wanted.generation:
                choice.in_flight += 1
                self.release(failed)
            return self.members[choice.name], wanted
        search = Request(wanted.model, wanted.target, wanted.admin_route, generation=False, tried=wanted.tried)
        while isinstance(choice := self._place(search), Host):
            member = self.members[choice.name]
            if await move(member):
                self.take(member)
                self.release(failed)
                return member, wanted
            search = search.after(choice)
        return None

    def release(self, member: Member) -> None:
        """A generation on `member` has ended: its slot goes to whoever waits for it."""
        member.host.in_flight -= 1
        if self.waiting.queued:
            self.wake()

    def wake(self) -> None:
        """Give hosts with room to the waiters they suit, in fair order."""
        if not self.waiting.queued:
            return
        for waiter, host in self.waiting.grant(self._place, self._room, self._admit):
            waiter.future.set_result(self.members[host.name])  # (a waiter that gave up has left the queue)

    @staticmethod
    def _admit(w: Waiter, host: Host) -> Admitted:
        """The rest of a waiter's decision, at the moment `host` has room for it."""
        try:
            got = w.decide()
        except Exception as refused:   # a GuardError (429, 401); anything else is the waiter's alone,
            w.future.set_exception(refused)   # not the pass's nor the exchange whose release ran it
            return Admitted.REFUSED
        if isinstance(got, Full):
            w.by_state = True
            return Admitted.NOT_KEY if got is Full.KEY else Admitted.NOT_ANY
        w.ticket, w.by_state = got, False
        return Admitted.YES

    def _place(self, wanted: Request) -> Host | Verdict:
        self.turn += 1
        return choose(self.hosts, wanted, self.clock(), self.turn)

    def _room(self) -> bool:
        """Some host that takes requests now has a free slot (else no waiter can have one)."""
        alone = self.hosts.alone
        if alone is not None:   # (never unavailable)
            return alone.in_flight < alone.max_concurrent
        now = self.clock()
        return any(h.in_flight < h.max_concurrent and h.available(now) for h in self.hosts.order)

    def _retry_after(self) -> int:
        """Seconds until a host may take requests again: the nearest breaker, else two health checks."""
        now = self.clock()
        waits = [h.open_until - now for h in self.hosts.order if h.up and h.open_until > now]
        return max(1, math.ceil(min(waits) if waits else 2 * self.routing.health_interval))

    # --- what happened --------------------------------------------------------------

    def failed(self, member: Member, failure: Failure, status: int = 0, *, sent_at: float) -> None:
        """A request failed on `member` before its first byte (or its answer was an error status)."""
        host = member.host
        if failure is Failure.REFUSED and not self.checks_on:
            # Down at once means up again after good checks: without checks, the breaker alone.
            failure = Failure.RESET
        was_up = host.up
        if host.failed(failure, status, now=self.clock(), sent_at=sent_at) and self.waiting.queued:
            asyncio.get_running_loop().call_later(host.backoff, self.wake)
        if host.up != was_up:
            self.went(member, "a request's connection was refused")
            self.snapshot_changed()

    def went(self, member: Member, why: str = "") -> None:
        """Say once that `member` has just gone down or come back up (as Redis is said to go and come back)."""
        up, total = self.up_count(), len(self.members)
        where = f"upstream \"{member.name}\" (http://{member.settings.address.authority})"
        if member.host.up:
            logs.log.info("%s is up again (%d of %d host%s up)", where, up, total, "s" if total != 1 else "")
        else:
            logs.log.warning("%s is down%s (%d of %d host%s up)", where, f": {why}" if why else "", up, total,
                             "s" if total != 1 else "")

    def answered(self, member: Member, status: int, sent_at: float) -> None:
        """A response head came from `member` and went to the client."""
        if status in (429, 500, 503):
            self.failed(member, Failure.STATUS, status, sent_at=sent_at)
        else:
            member.host.succeeded(sent_at)

    def not_found(self, member: Member, model: str) -> None:
        """`member` answered 404 for a model its list held: the list is stale."""
        member.host.forget(routing.canonical_model(model))
        member.tags_due = True
        self.snapshot_changed()

    def snapshot_changed(self) -> None:
        self.listings.clear()
        self._models_due = True

    # --- what the rest of the gate reads ----------------------------------------------

    def up_count(self) -> int:
        """Hosts up by their health checks: what /ready answers."""
        return self.hosts.up_count()

    def models(self) -> frozenset[str] | None:
        """The canonical names of the models any host lists (hosts whose list is unknown add none);
        None while no host's list is known.

        The same object while the names stay the same: the metrics read it at every request's end,
        and start their labels afresh when it is another.
        """
        if self._models_due:
            self._models_due = False
            lists = [m.host.models for m in self.members.values() if m.host.models is not None]
            models = frozenset().union(*lists) if lists else None
            if models != self._models:
                self._models = models
        return self._models

    def hold_for(self, member: Member, wanted: Request, attempts: int) -> frozenset[int]:
        """The statuses to keep from the client on this attempt: those another host may answer instead."""
        if self.hosts.alone is not None or attempts >= self.routing.max_attempts or wanted.target is not None:
            return _NO_HOLD
        return HOLD_LISTED if wanted.model is not None and member.host.lists(wanted.model) else HOLD
