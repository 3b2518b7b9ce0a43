"""Admission: one grant per request for its key, its client and its host, returned to the exchange.

    grant = await admit(gate, key, client, route, model, host_name, reserve, gone)
    ...                                   # forwarded on grant.member
    finish(gate, grant, record, member)   # slots freed, the reservation settled, the next waiter decided

One order for every generation: its host is chosen first (hosts.py, decisions.routing.choose,
also for the single `upstream`, a set of one), then the state decides the rest with it, at one
moment: the key's slot, the budget reservation, and (bans, on a wake) whether it may still run.

- In one process that moment has nothing awaited in it: a host with room is found and the state
  `take`s the key's slot and reservation in the same step.  When either is missing the request
  waits in one fair queue (hosts.wait: per key, by weight), and each time a host has room for it
  the whole decision is made again: the key's slot and budget, its ban, whether its key still
  exists after a reload.  So a waiting request gets whichever suitable host frees first, waits at
  most queue_timeout in all, and a budget spent or a ban imposed meanwhile refuses it (429)
  instead of running it.
- With Redis ([cluster]) the host is picked (hosts.pick) and its lease is decided with the rest in
  the one round trip of state.admit; a request that waits there is decided again, budget included,
  by the grant pass (state/waiting.py), and its ban is checked here when it is woken.

A request that takes no slot and reserves nothing (anything but a generation, or a generation
without limits) takes no ticket.  A request refused on the way gives back what it was granted.
(A listing answered by guardproxy itself takes no host here: `forward` False.)
"""

from __future__ import annotations

import asyncio

from ..config.model import KeyEntry
from ..decisions.routes import Route
from ..decisions.routing import Request
from .gate import Gate
from .hosts import Member
from .state.base import NO_TICKET, Full, Outcome, Ticket


class Grant:
    """What admission granted one request: the state's ticket, its host, and what routing knows of it."""

    __slots__ = ("ticket", "member", "wanted", "holds_host")

    def __init__(self, ticket: Ticket, member: Member | None, wanted: Request, holds_host: bool = False) -> None:
        self.ticket = ticket          # for state.finish
        self.member = member          # the host it goes to (None: a listing guardproxy answers itself)
        self.wanted = wanted          # what routing knows of it (for a failover)
        self.holds_host = holds_host  # the ticket holds the host's slot: a lease the state moves on a failover


async def admit(gate: Gate, key: KeyEntry, client: str, route: Route, model: str | None, host_name: str | None,
                reserve: int, gone: "asyncio.Future[None]", *, forward: bool = True) -> Grant:
    """Decide the request's admission; raises what the state raises (429, 503, ClientGone) or what
    choosing a host does (UnknownHost, NoUpstream, HostQueueTimeout)."""
    state, hosts = gate.state, gate.hosts
    if not route.generation:   # no slot, no reservation, never a wait: rates alone (with Redis)
        at_once = admit_at_once(gate, route, model, host_name, forward=forward)
        if at_once is not None:
            return at_once
        return _placed_at_once(gate, await state.admit(key, client, False, None), route, model, host_name, forward)
    if state.shares_hosts:
        member, wanted = hosts.pick(route, model, host_name)
        ticket = await state.admit(key, client, True, gone, member.name, member.settings.max_concurrent, reserve)
        if ticket.waited:
            try:
                _still_allowed(gate, key, client)
            except BaseException:
                state.finish(ticket, None)
                raise
        hosts.take(member)
        return Grant(ticket, member, wanted, holds_host=ticket.slot)
    wanted = hosts.request(route, model, host_name)
    room = hosts.place(wanted)
    got = state.take(key, reserve) if room is not None else None
    if isinstance(got, Ticket):
        assert room is not None
        hosts.take(room)
        return Grant(got, room, wanted)
    state.check_budget(key, reserve)   # refused at once rather than after waiting

    def decide() -> Ticket | Full:   # each time a host has room for it: everything again
        _still_allowed(gate, key, client)
        return state.take(key, reserve)

    found, ticket = await hosts.wait(wanted, key.name, gate.policies.queue_timeout, gone, key.weight, decide,
                                     lambda t: state.finish(t, None), by_state=got is not None)
    return Grant(ticket, found, wanted)


def admit_at_once(gate: Gate, route: Route, model: str | None, host_name: str | None, *,
                  forward: bool = True) -> Grant | None:
    """admit() without an await where nothing is left to decide: a request that takes no slot, with a
    state whose rates and bans were decided before the key and after it (in process).  None: await
    admit().  (Two coroutines fewer on every small request.)"""
    if route.generation or not gate.state.decided_before_admit:
        return None
    return _placed_at_once(gate, NO_TICKET, route, model, host_name, forward)


def _placed_at_once(gate: Gate, ticket: Ticket, route: Route, model: str | None, host_name: str | None,
                    forward: bool) -> Grant:
    """The grant of a request that takes no slot: its host placed now (it never waits for one)."""
    hosts = gate.hosts
    if not forward:
        return Grant(ticket, None, hosts.request(route, model, host_name))
    member, wanted = hosts.first(route, model, host_name)
    return Grant(ticket, member, wanted)


def _still_allowed(gate: Gate, key: KeyEntry, client: str) -> None:
    """What may have changed while a request waited: a ban on its address, its key by a reload."""
    gate.state.check_ban(client, gate.clock())
    gate.keys.recheck(key)


def finish(gate: Gate, grant: Grant, outcome: Outcome | None, on: Member | None = None) -> None:
    """The request is over: its key's slot, its reservation and its host's slot are given back at
    one moment, and only then is the next waiter decided (a freed host with its key's slot still
    held would go to another key).  `on`: the host it ended on, after a failover."""
    gate.state.finish(grant.ticket, outcome)
    member = on or grant.member
    if member is not None and grant.wanted.generation:   # (a generation's host slot was taken)
        gate.hosts.release(member)   # (wakes whoever waits)
