"""Admission: one grant per request for its key, its client and its host, returned to the exchange.

    grant = await admit(gate, key, client, route, model, host_name, reserve, gone)
    ...                                   # forwarded on grant.member
    gate.state.finish(grant.ticket, record)

The state (engine/state/) decides rates, bans, the budget reservation and the generation slot in
one call, and when several gates share each host's max_concurrent ([cluster] with [[upstreams]])
the host's lease too: the host is then chosen first (hosts.pick), so that its lease is decided
with the rest, at the same moment and in the same round trip.  In one process the host is chosen
as soon as the state has granted the rest, with nothing awaited in between, among the hosts with
room (hosts.first, which counts a generation's host slot); when none has, the request waits in the
hosts' fair queue (hosts.wait) for what is left of the same queue_timeout: a request waits at most
queue_timeout in all, whichever queues it passes through.  A request refused on the way gives back
what it was granted.  (A listing answered by guardproxy itself takes no host here: `forward` False.)
"""

from __future__ import annotations

import asyncio

from ..config.model import KeyEntry
from ..decisions.routes import Route
from ..decisions.routing import Request
from .gate import Gate
from .hosts import Member
from .state.base import Ticket


class Grant:
    """What admission granted one request: the state's ticket, and the host when it was chosen with it."""

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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + gate.policies.queue_timeout
    if state.shares_hosts and route.generation and hosts.several:
        member, picked = hosts.pick(route, model, host_name)
        ticket = await state.admit(key, client, True, gone, member.name, member.settings.max_concurrent, reserve)
        hosts.take(member)
        return Grant(ticket, member, picked, holds_host=True)
    slot = gate.policies.slots_on and route.generation
    ticket = await state.admit(key, client, route.generation, gone if slot else None, reserve=reserve)
    if not forward:
        return Grant(ticket, None, hosts.request(route, model, host_name))
    try:
        found, wanted = hosts.first(route, model, host_name)
        if found is None:
            found = await hosts.wait(wanted, key.name, max(0.0, deadline - loop.time()), gone, key.weight)
    except BaseException:
        state.finish(ticket, None)   # (nothing ran: the slot and the reservation go back)
        raise
    return Grant(ticket, found, wanted)
