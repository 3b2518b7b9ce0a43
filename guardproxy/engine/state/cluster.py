"""The Redis backend ([cluster]): every gate that uses the same Redis enforces one set of limits.

One round trip before a request is forwarded (scripts.ADMIT: ban, rates, budget, a slot) and
one, unawaited, after it ends (scripts.FINISH: free the slot, add the tokens); a refused key
costs one (scripts.AUTH_FAILED).  Bans Redis reports are remembered here until they end, so a
banned address costs no round trip.  A request that finds no free slot waits in this
instance's fair queue (waiting.py); slots are leases renewed while their streams run (RENEW),
so an instance that dies holds nothing after lease_ttl.

When Redis is down or slower than op_timeout, every decision falls to on_redis_error at once:
"local" enforces this instance's share of the limits in process (divided by the live instances
last seen), "open" none, "closed" answers 503.  It is logged once, and once when Redis is back;
`errors` and `fallbacks` count it.  Tokens counted meanwhile are sent when Redis is back.

A Redis that answers with an error (OOM, NOPERM, BUSY, a script error, ...) is as unavailable as
one that does not answer: a script that failed may have done half its work or none, so nothing
it would have decided is trusted until a write succeeds again.  The renewal loop probes it,
backing off, and the first renewal that succeeds re-sends every lease held here and then the
tokens and releases that could not be sent, before any other call (one pipelined connection).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sys
import time
from typing import TextIO

from ...config.model import Budget, Config, KeyEntry
from ...config.redis_url import RedisAddress
from ...decisions.budget import TokenBook, bucket_seconds
from ...decisions.concurrency import DEFAULT_HOST, Occupancy
from ...decisions.limits import address_bucket, limit_share, retry_after_header
from ...decisions.policy import Banned, BudgetExceeded, KeyRateLimited, LimitsUnavailable, Policies, RateLimited
from .bans import ALL, UNBAN_CHANNEL, lift_in_redis
from .base import NO_TICKET, Outcome, State, Ticket
from .local import spent
from .commands import Reply
from .pubsub import RedisSubscriber
from .resp import RedisClient, RedisError, RedisRefused, RedisReplyError
from . import scripts
from .commands import Script, script_commands
from .scripts import ADMIT, AUTH_FAILED, FINISH, MOVE, RENEW, Calls, key_keys, reservation_member, reserved_key
from .waiting import SlotQueue

START_WAIT = 1.0          # start-up waits this long for Redis, then serves by on_redis_error
MAX_UNSENT = 65536        # FINISHes kept one by one while Redis is away; beyond, folded per key
BACKGROUND_TIMEOUT = 1.0  # renewals and start-up/close calls are off the request path: more patience
PROBE_BACKOFF = (0.05, 5.0)   # while Redis answers errors, renewals probe it this often, doubling
SCRIPTS = tuple(v for v in vars(scripts).values() if isinstance(v, Script))   # SCRIPT LOADed at each connect
# What a gate runs itself, besides the scripts' commands: the handshake (INFO; SELECT for a db other
# than 0), loading and running scripts, the wake-up channel, the heartbeat's removal at close and
# the `budgets` report (TIME, HGETALL).
OWN_COMMANDS = ("ping", "info", "select", "evalsha", "script|load", "subscribe", "zrem", "time", "hgetall")


def gate_acl(prefix: str) -> str:
    """The ACL rules of a Redis user for gates with this key_prefix: its keys and channel, the commands it runs."""
    commands = sorted(set(OWN_COMMANDS) | script_commands(SCRIPTS))
    return f"resetkeys ~{prefix}* resetchannels &{prefix}* -@all " + " ".join("+" + c for c in commands)


RULES = {"local": "limits are enforced by each instance, divided by the instances last seen",
         "open": "no limits are enforced", "closed": "requests are refused with 503"}


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class RedisState(State):
    def __init__(self, config: Config, policies: Policies, address: RedisAddress, *, log: TextIO = sys.stderr,
                 backoff: tuple[float, float] = (0.05, 5.0), start_wait: float = START_WAIT) -> None:
        cluster = config.cluster
        assert cluster is not None
        self.policies = policies
        self.address = address
        self.log = log
        self.rule = cluster.on_redis_error
        self.lease_ttl = cluster.lease_ttl
        self.start_wait = start_wait
        # "local": this instance's share of the limits; and every ban known here, from Redis or counted locally.
        self.fallback = Policies(config)
        self.clock = time.monotonic
        self.wall = time.time
        self.id = secrets.token_hex(6).encode()
        self.prefix = cluster.key_prefix.encode()
        self.slots = SlotQueue(self, config.limits.max_queue)
        self.calls = Calls(self.prefix, self.lease_ttl, self.slots.queued_ttl)
        self.all_slots, self.queued_key = self.calls.all_slots, self.calls.queued
        self.client = RedisClient(address, timeout=cluster.op_timeout, backoff=backoff, on_state=self._client_state,
                                  scripts=SCRIPTS)
        self.unban_channel = self.prefix + UNBAN_CHANNEL  # `guardproxy unban`, or [ban] removed on any gate
        self.subscriber = RedisSubscriber(address, [self.calls.channel, self.unban_channel], self._freed,
                                          backoff=backoff, on_state=self._subscriber_state,
                                          ping_interval=max(1.0, self.lease_ttl / 3))
        self.errors = 0
        self.fallbacks = 0
        self.instances = 1        # live instances last seen
        self.up: bool | None = None
        self.sick: RedisError | None = None   # the error Redis answered, until a renewal succeeds
        self.occupancy = Occupancy()                  # the slots this instance holds, whoever granted them
        self.leases: dict[bytes, Ticket] = {}         # slots held here, by lease
        self.reserving: dict[bytes, Ticket] = {}      # budget reservations held here, by lease (the request's ID)
        self._serial = 0
        # FINISHes Redis may not have applied (not connected, or no answer in time), by request ID: sent
        # again when Redis is back, with the same ID, so one that did run is not applied twice.
        self.unsent: dict[bytes, tuple[Ticket, int, bool]] = {}
        self._folds: dict[tuple[str, str], Ticket] = {}
        self.unsent_book = TokenBook()                    # their tokens, as windows: the local budget estimate
        self.unreleased: dict[bytes, Ticket] = {}         # leases ended here that Redis could not be told of
        self.seen: dict[tuple[str, str], int] = {}        # the window totals Redis last reported
        self._renew_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lifting: set[asyncio.Task[None]] = set()
        self.apply(config)

    def apply(self, config: Config) -> None:
        removed = getattr(self, "ban", config.ban).after_failures and not config.ban.after_failures
        self.policies.apply(config)
        self.fallback.apply(config)
        self.ban = config.ban
        self.max_total = config.limits.max_concurrent
        self.calls.configure(self.policies.per_ip, config.ban, self.max_total)
        self.slots.queue.max_queue = config.limits.max_queue
        self.slots.kick()   # limits may have grown
        if removed:  # [ban] removed: lifted for every gate, not only here (they would find it in Redis again)
            self._lifting.add(task := asyncio.get_running_loop().create_task(self._lift_all()))
            task.add_done_callback(self._lifting.discard)

    async def _lift_all(self) -> None:
        try:
            n = await lift_in_redis(self.client, self.prefix, None)
        except RedisError as e:
            self._say(f"[ban] was removed, but the bans in Redis could not be lifted ({e}); "
                      f"`guardproxy unban --all` lifts them")
            return
        self._say(f"[ban] was removed: {n} ban{'s' if n != 1 else ''} lifted in Redis; every gate forgets its copy")

    def forget_ban(self, bucket: str | None) -> bool:
        had = self.fallback.bans.lift(bucket)
        return self.policies.bans.lift(bucket) or had

    shares_hosts = True  # several gates in front of one host share its max_concurrent

    def waiting(self) -> int:
        return self.slots.queue.queued   # with Redis or without (on_redis_error decides their grants)

    @property
    def connected(self) -> bool:
        """Connected to a Redis that answers without errors: only then is it asked to decide."""
        return self.sick is None and self.client.connected

    # --- the request path ------------------------------------------------------------------

    def before_auth(self, client: str, now: float) -> None:
        self.fallback.check_ban(client, now)   # a ban known here (from Redis, or counted without it)

    def check_ban(self, client: str, now: float) -> None:
        self.fallback.check_ban(client, now)

    async def auth_failed(self, client: str, now: float) -> None:
        if not (self.ban.after_failures or self.policies.per_ip):
            return   # nothing to count
        addr = address_bucket(client)
        if self.connected:
            try:
                code, wait_ms = _ints(await self.client.evalsha_encoded(AUTH_FAILED, *self.calls.auth_failed(addr)), 2)
            except RedisError as e:
                self.error(e)
            else:
                if code == 1:
                    self._banned(addr, wait_ms, now)
                elif code == 2:
                    raise RateLimited(headers=[retry_after_header(wait_ms / 1000)])
                elif code == 6:
                    self.fallback.bans.impose(addr, now + wait_ms / 1000)
                return
        self.fallbacks += 1
        if self.rule == "local":
            self.fallback.before_auth(client, now)
            self.fallback.auth_failed(client, now)

    def _banned(self, addr: str, wait_ms: int, now: float) -> None:
        self.fallback.bans.impose(addr, now + wait_ms / 1000)
        raise Banned(headers=[retry_after_header(wait_ms / 1000)])

    def after_auth(self, key: KeyEntry, now: float) -> None:
        pass   # decided with the rest, in the one round trip of admit()

    async def admit(self, key: KeyEntry, client: str, generation: bool, gone: "asyncio.Future[None] | None",
                    host: str = DEFAULT_HOST, host_limit: int | None = None, reserve: int = 0) -> Ticket:
        pol = self.policies
        slot = generation and (pol.slots_on or host_limit is not None)
        budget = key.tokens if generation else None
        if not (slot or budget or pol.per_ip or key.rate or self.ban.after_failures):
            return NO_TICKET
        if slot or budget:
            self._serial += 1
            lease = b"%s:%d" % (self.id, self._serial)
        else:
            lease = b""
        ticket = Ticket(key.name, host, slot, budget, lease, reserve if budget else 0)
        if not self.connected:
            return await self._without_redis(key, client, ticket, host_limit, gone)
        addr = address_bucket(client)
        queue_first = slot and key.name in self.slots.queue   # this key's earlier requests wait: keep the order
        freed = self.slots.freed
        try:
            code, wait_ms, total = _ints(await self.client.evalsha_encoded(ADMIT, *self.calls.admit(
                addr, key, generation, host, host_limit, (2 if queue_first else 1) if slot else 0, lease,
                ticket.reserved)), 3)
        except RedisError as e:
            self.error(e)
            return await self._without_redis(key, client, ticket, host_limit, gone)
        if budget is not None and total >= 0:
            self.seen[(key.name, budget.unit)] = total
        if code == 0:
            self.hold(ticket)
            return ticket
        if code == 5:
            return await self.slots.wait(ticket, key.max_concurrent, host_limit, gone, kick=self.slots.freed != freed,
                                         weight=key.weight)
        retry = [retry_after_header(wait_ms / 1000)]
        if code == 1:
            self._banned(addr, wait_ms, self.clock())
        if code == 2:
            raise RateLimited(headers=retry)
        if code == 3:
            raise KeyRateLimited(headers=retry)
        raise BudgetExceeded(headers=retry if wait_ms >= 0 else ())   # (-1: it can never fit)

    async def _without_redis(self, key: KeyEntry, client: str, ticket: Ticket, host_limit: int | None,
                             gone: "asyncio.Future[None] | None") -> Ticket:
        """on_redis_error decides."""
        self.fallbacks += 1
        if self.rule == "closed":
            raise LimitsUnavailable(headers=[("Retry-After", "1")])
        if self.rule == "local":
            now, fb = self.clock(), self.fallback
            fb.before_auth(client, now)
            fb.after_auth(key, now)
            if ticket.budget is not None:
                self.check_budget_locally(ticket)
        if not ticket.slot:
            self.hold(ticket)
            return ticket
        if self.rule == "open" or (key.name not in self.slots.queue and self.fits_locally(
                key.name, key.max_concurrent, ticket.host, host_limit)):
            self.hold(ticket)
            return ticket
        return await self.slots.wait(ticket, key.max_concurrent, host_limit, gone, kick=True, weight=key.weight)

    async def move(self, ticket: Ticket, host: str, host_limit: int | None) -> bool:
        if self.leases.get(ticket.lease) is not ticket:
            return False   # no slot held here
        if self.connected:
            try:
                moved = await self.client.evalsha(MOVE, *self.calls.move(ticket.lease, ticket.host, host, host_limit))
            except RedisError as e:
                self.error(e)
            else:
                if moved == 1:
                    self._moved(ticket, host)
                return moved == 1
        self.fallbacks += 1
        if self.rule == "closed" or (self.rule == "local" and not self.occupancy.fits(
                ticket.key, None, host, limit_share(host_limit, self.instances), None)):
            return False
        self._moved(ticket, host)   # (its lease in Redis, if any, runs out: renewals now name `host`)
        return True

    def _moved(self, ticket: Ticket, host: str) -> None:
        self.occupancy.drop(ticket.key, ticket.host)
        self.occupancy.take(ticket.key, host)
        ticket.host = host
        self.slots.released()   # the old host has room for whoever waits here

    def fits_locally(self, key: str, key_limit: int | None, host: str, host_limit: int | None) -> bool:
        n = self.instances
        return self.occupancy.fits(key, limit_share(key_limit, n), host, limit_share(host_limit, n),
                                   limit_share(self.max_total, n))

    def check_budget_locally(self, ticket: Ticket) -> None:
        """Without Redis: this instance's share of what Redis last said was left, less what it has
        counted since and what its running generations reserved; `ticket.reserved` must fit."""
        name, budget = ticket.key, ticket.budget
        assert budget is not None
        left = (budget.tokens - self.seen.get((name, budget.unit), 0)) // self.instances
        held = sum(t.reserved for t in self.reserving.values() if t.key == name and t.budget == budget)
        wait = bucket_seconds(budget.window) if left <= 0 else self.unsent_book.retry_after(
            name, Budget(left, budget.window, budget.unit), self.wall(), held, ticket.reserved)
        if wait:
            raise BudgetExceeded(headers=[retry_after_header(wait)])

    def candidate(self, ticket: Ticket) -> tuple[tuple[bytes, ...], tuple[int | float, ...]]:
        """TAKE's keys for a waiting request, and its budget's arguments."""
        return self.calls.take(ticket.key, ticket.host, ticket.budget)

    def hold(self, ticket: Ticket) -> None:
        """`ticket` was granted: its slot, and its reservation, are held (and renewed) here."""
        if ticket.slot:
            self.occupancy.take(ticket.key, ticket.host)
            self.leases[ticket.lease] = ticket
        if ticket.budget is not None:
            self.reserving[ticket.lease] = ticket

    def finish(self, ticket: Ticket, outcome: Outcome | None) -> None:
        if ticket is NO_TICKET:
            return
        tokens = spent(outcome) if ticket.budget is not None and outcome is not None else 0
        slot = ticket.slot and self.leases.pop(ticket.lease, None) is not None
        if slot:
            self.occupancy.drop(ticket.key, ticket.host)
            self.slots.released()
        reserved = self.reserving.pop(ticket.lease, None) is not None
        if slot or reserved or tokens:
            self.send_finish(ticket, tokens, slot)

    def send_finish(self, ticket: Ticket, tokens: int, slot: bool) -> None:
        """FINISH, unawaited, with the request's ID: applied once however often it is sent."""
        if not ticket.lease:
            self._serial += 1
            ticket.lease = b"%s:%d" % (self.id, self._serial)

        def failed(e: RedisError) -> None:
            self.error(e)   # it may have run all the same: sent again, with its ID, when Redis is back
            self._keep(ticket, tokens, slot)
        if self.connected:
            self.client.evalsha_nowait(FINISH, *self.calls.finish(
                ticket.key, ticket.host, ticket.budget, ticket.lease, slot, ticket.reserved, tokens), on_error=failed)
        else:
            self._keep(ticket, tokens, slot)

    def _keep(self, ticket: Ticket, tokens: int, slot: bool) -> None:
        """What a FINISH that could not be sent (or not known to have run) would have told Redis, to
        send when it answers again: tokens with the request's ID (the slot's release with them), else
        the slot's release alone.  (A reservation alone runs out by itself.)"""
        if tokens and ticket.budget is not None:
            self._unsent(ticket, tokens, slot)
        elif slot and len(self.unreleased) < 65536:   # (past that, leases simply run out after lease_ttl)
            self.unreleased[ticket.lease] = ticket

    def _unsent(self, ticket: Ticket, tokens: int, slot: bool) -> None:
        budget = ticket.budget
        assert budget is not None
        self.unsent_book.add(ticket.key, budget, self.wall(), tokens)
        if len(self.unsent) < MAX_UNSENT:
            self.unsent[ticket.lease] = (ticket, tokens, slot)
            return
        if slot and len(self.unreleased) < 65536:
            self.unreleased[ticket.lease] = ticket
        # Redis away for long: one entry per key and window from here on (its ID new each time).
        fold = self._folds.get((ticket.key, budget.unit))
        if fold is None:
            self._serial += 1
            fold = self._folds[(ticket.key, budget.unit)] = Ticket(
                ticket.key, DEFAULT_HOST, False, budget, b"%s:%d" % (self.id, self._serial))
        self.unsent[fold.lease] = (fold, self.unsent.get(fold.lease, (fold, 0, False))[1] + tokens, False)

    # --- Redis's health ----------------------------------------------------------------------

    def _say(self, text: str) -> None:
        print(f"guardproxy: redis {self.address.url}: {text}", file=self.log, flush=True)

    def error(self, e: RedisError) -> None:
        self.errors += 1
        if isinstance(e, RedisReplyError) and self.sick is None and self.client.connected:
            self.sick = e   # the connection is fine, so no change of its state reports it
            self._say(f"answered an error ({e}); until a write succeeds again, {RULES[self.rule]} "
                      f"(on_redis_error = \"{self.rule}\")")
            self._renew_now.set()
            self.slots.kick()

    def _client_state(self, up: bool, error: BaseException | None) -> None:
        was, self.up = self.up, up
        if not up:
            what = "refuses to serve this gate" if isinstance(error, RedisRefused) else "unreachable"
            self._say(f"{what} ({error}); until it is back, {RULES[self.rule]} (on_redis_error = \"{self.rule}\")")
            self.slots.kick()
            return
        if was is False:
            self._say("reachable again; limits are shared again")
        self.sick = None         # a new connection: the renewal it starts with says whether Redis is well
        self._send_kept()
        self._renew_now.set()
        self.slots.kick()

    def _send_kept(self) -> None:
        """The tokens and lease releases kept while Redis could not be told: sent now, in order."""
        unsent, self.unsent, self._folds = self.unsent, {}, {}
        self.unsent_book = TokenBook()
        unreleased, self.unreleased = self.unreleased, {}
        for ticket, tokens, slot in unsent.values():   # each with its request's ID: applied once
            self.send_finish(ticket, tokens, slot)
        for ticket in unreleased.values():
            self.send_finish(ticket, 0, True)

    def _well_again(self) -> None:
        """A renewal succeeded after Redis answered errors: its leases are back; now the rest."""
        if self.sick is None:
            return
        self.sick = None
        self._say("answers without errors again; limits are shared again")
        self._send_kept()
        self.slots.kick()

    def _subscriber_state(self, up: bool, error: BaseException | None) -> None:
        """Only a refusal is worth a line: a lost subscription goes with a lost client, which says so."""
        if not up and isinstance(error, RedisRefused):
            self._say(f"refuses the subscription to {self.calls.channel.decode(errors='replace')} ({error}); "
                      "requests waiting for a slot notice freed slots by polling only")

    def _freed(self, channel: bytes, data: bytes) -> None:
        if channel == self.unban_channel:
            self.forget_ban(None if data == ALL.encode() else data.decode("ascii", "replace"))
            return
        self.slots.on_freed()

    async def renew(self) -> None:
        """Heartbeat, and every lease this instance holds (leases taken while Redis was away join in)."""
        sets: dict[bytes, list[bytes]] = {}
        for lease, t in self.leases.items():
            _, key_slots, host_slots = key_keys(self.prefix, t.key, t.host)
            for s in (key_slots, host_slots, self.all_slots):
                sets.setdefault(s, []).append(lease)
        for lease, t in self.reserving.items():
            assert t.budget is not None
            sets.setdefault(reserved_key(self.prefix, t.key, t.budget.unit), []).append(
                reservation_member(lease, t.reserved))
        args: list[bytes | int] = [self.id, _ms(self.lease_ttl)]
        for members in sets.values():
            args += [len(members), *members]
        n = await self.client.evalsha(RENEW, (self.calls.instances, *sets), args, timeout=BACKGROUND_TIMEOUT)
        if isinstance(n, int) and n >= 1 and n != self.instances:
            self.instances = n
            self.fallback.set_share(n)

    async def _renewing(self) -> None:
        """Renew every lease_ttl/3; while Redis answers errors, probe it so, backing off."""
        probe = PROBE_BACKOFF[0]
        while True:
            every = self.lease_ttl / 3
            if self.client.connected:
                try:
                    await self.renew()
                except RedisError as e:
                    self.error(e)
                else:
                    self._well_again()
            self._renew_now.clear()
            if self.sick is not None:
                every = min(every, probe * random.uniform(0.5, 1.0))
                probe = min(probe * 2, PROBE_BACKOFF[1])
            else:
                probe = PROBE_BACKOFF[0]
            try:
                async with asyncio.timeout(every):
                    await self._renew_now.wait()
            except TimeoutError:
                pass

    async def start(self) -> None:
        self.client.start()
        self.subscriber.start()
        if not await self.client.wait_connected(self.start_wait) and self.up is None:
            self._client_state(False, RedisError("no answer at start-up"))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._renewing()), loop.create_task(self.slots.granting())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.connected:   # answered in order: the finishes sent before it have landed
            try:
                await self.client.call(b"ZREM", self.calls.instances, self.id, timeout=BACKGROUND_TIMEOUT)
            except RedisError:
                pass
        await self.subscriber.close()
        await self.client.close()


def _ints(reply: Reply, n: int) -> list[int]:
    """A script's reply of `n` integers (anything else is treated as Redis failing)."""
    if not isinstance(reply, list) or len(reply) != n or not all(isinstance(x, int) for x in reply):
        raise RedisReplyError(f"unexpected reply from a guardproxy script: {reply!r:.200}")
    return [x for x in reply if isinstance(x, int)]
