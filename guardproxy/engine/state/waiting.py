"""Requests waiting for a shared generation slot: this instance's fair queue, served by grant passes.

A request that finds no free slot waits here, per key, round-robin across keys (the fairness
of the in-process gate, kept per instance).  A grant pass offers Redis the waiters in the order
they would be served (scripts.TAKE: one round trip for up to MAX_OFFERED) and wakes those that
got a slot.  Passes run when a slot frees: a FINISH anywhere publishes on `freed` while anyone
waits, a finish here wakes them directly; and every `poll` seconds, for a message lost while
the subscriber was reconnecting.  Without Redis, on_redis_error decides the pass.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ...decisions.concurrency import FairQueue, QueueFull
from ...decisions.limits import retry_after_header
from ...decisions.policy import BudgetExceeded, LimitsUnavailable, Policies
from .. import slots
from .base import Outcome, Ticket
from .resp import RedisClient, RedisError
from .scripts import TAKE

MAX_OFFERED = 64


class Shared(Protocol):
    """What a grant pass needs of the Redis backend."""

    client: RedisClient
    policies: Policies
    rule: str
    lease_ttl: float
    max_total: int | None
    all_slots: bytes
    queued_key: bytes
    fallbacks: int

    @property
    def connected(self) -> bool: ...
    def candidate(self, ticket: Ticket) -> tuple[tuple[bytes, ...], tuple[int | float, ...]]: ...
    def check_budget_locally(self, ticket: Ticket) -> None: ...
    def hold(self, ticket: Ticket) -> None: ...
    def finish(self, ticket: Ticket, outcome: Outcome | None) -> None: ...
    def send_finish(self, ticket: Ticket, tokens: int, slot: bool) -> None: ...
    def error(self, e: RedisError) -> None: ...
    def fits_locally(self, key: str, key_limit: int | None, host: str, host_limit: int | None) -> bool: ...


class _Waiter:
    __slots__ = ("future", "ticket", "key_limit", "host_limit")

    def __init__(self, future: "asyncio.Future[None]", ticket: Ticket, key_limit: int | None,
                 host_limit: int | None) -> None:
        self.future = future
        self.ticket = ticket
        self.key_limit = key_limit
        self.host_limit = host_limit


def _granted(fut: "asyncio.Future[None]") -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


class SlotQueue:
    def __init__(self, state: Shared, max_queue: int) -> None:
        self.state = state
        self.queue = FairQueue(max_queue)
        self.freed = 0                                   # `freed` messages heard
        self.poll = min(1.0, state.lease_ttl / 3)
        self.queued_ttl = 3 * self.poll                  # the `queued` flag outlives a missed pass or two
        self._kick = asyncio.Event()      # run a pass now
        self._waiting = asyncio.Event()   # someone waits: poll

    def kick(self) -> None:
        self._kick.set()

    def on_freed(self) -> None:
        self.freed += 1
        if self.queue.queued:
            self._kick.set()

    def released(self) -> None:
        if self.queue.queued:
            self._kick.set()

    async def wait(self, ticket: Ticket, key_limit: int | None, host_limit: int | None,
                   gone: "asyncio.Future[None] | None", *, kick: bool, weight: float = 1.0) -> Ticket:
        """Queue until a pass grants a slot; `kick`: run a pass at once (a slot may already be free);
        `weight`: the key's share of the grants while keys wait (FairQueue)."""
        w = _Waiter(asyncio.get_running_loop().create_future(), ticket, key_limit, host_limit)
        try:
            self.queue.push(ticket.key, w, weight)
        except QueueFull:
            raise slots.queue_full() from None
        self._waiting.set()
        if kick:
            self._kick.set()

        def give_up() -> None:
            if self.queue.remove(ticket.key, lambda x: x is w) is None and _granted(w.future):
                self.state.finish(ticket, None)   # granted in the same instant it gave up: hand it back

        await slots.wait_granted(w.future, self.state.policies.queue_timeout, gone, give_up)
        ticket.waited = True
        return ticket

    async def granting(self) -> None:
        """The pass loop (one task per instance)."""
        while True:
            if not self.queue.queued:
                self._waiting.clear()
                await self._waiting.wait()
            try:
                async with asyncio.timeout(self.poll):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            if self.queue.queued:
                try:
                    await self._pass()
                except Exception as exc:   # a bug must not stop every later grant
                    asyncio.get_running_loop().call_exception_handler(
                        {"message": "guardproxy: slot grant pass failed", "exception": exc})

    async def _pass(self) -> None:
        state = self.state
        offered = self.queue.in_turn(MAX_OFFERED)
        if state.connected:
            keys = [state.all_slots, state.queued_key]
            args: list[bytes | int | float] = [int(state.lease_ttl * 1000), state.max_total or 0, int(self.queued_ttl * 1000)]
            for _, w in offered:
                more, budget = state.candidate(w.ticket)
                keys += more
                args += [w.ticket.lease, w.key_limit or 0, w.host_limit or 0, *budget, w.ticket.reserved]
            try:
                flags = await state.client.evalsha(TAKE, keys, args)
                if not isinstance(flags, list) or len(flags) != len(offered):
                    raise RedisError(f"unexpected reply from a guardproxy script: {flags!r:.200}")
            except RedisError as e:
                state.error(e)
            else:
                for (key, w), ok in zip(offered, flags):
                    if ok == 1:
                        self._grant(key, w, leased=True)
                    elif isinstance(ok, int) and ok < 0:   # its budget, decided again now, is spent
                        self._refuse(key, w, BudgetExceeded(headers=[retry_after_header((-1 - ok) / 1000)]
                                                            if ok < -1 else ()))
                if all(ok != 0 for ok in flags) and self.queue.queued:
                    self._kick.set()   # more waited than were offered, and there may be room for them
                return
        state.fallbacks += 1
        if state.rule == "closed":
            while self.queue.queued:
                for key in self.queue.keys():
                    self.queue.pop(key).future.set_exception(LimitsUnavailable(headers=[("Retry-After", "1")]))
            return
        for key, w in offered:
            if state.rule == "open" or state.fits_locally(key, w.key_limit, w.ticket.host, w.host_limit):
                if state.rule == "local" and w.ticket.budget is not None:
                    try:
                        state.check_budget_locally(w.ticket)
                    except BudgetExceeded as refused:
                        self._refuse(key, w, refused)
                        continue
                self._grant(key, w, leased=False)

    def _refuse(self, key: str, w: _Waiter, refusal: Exception) -> None:
        if self.queue.remove(key, lambda x: x is w) is not None:
            w.future.set_exception(refusal)

    def _grant(self, key: str, w: _Waiter, *, leased: bool) -> None:
        if self.queue.remove(key, lambda x: x is w) is None:
            if leased:   # it gave up during the round trip: free the slot (and reservation) at once
                self.state.send_finish(w.ticket, 0, True)
            return
        self.queue.served(key)
        self.state.hold(w.ticket)
        w.future.set_result(None)
