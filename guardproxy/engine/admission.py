"""Admission: one grant per request for its key, its client and its host, returned to the exchange.

    grant = await admit(gate, key, client, route, model, host_name, reserve, gone)
    ...                                   # forwarded on grant.member, or on a host chosen then
    gate.state.finish(grant.ticket, record)

The state (engine/state/) decides rates, bans, the budget reservation and the generation slot in
one call, and when several gates share each host's max_concurrent ([cluster] with [[upstreams]])
the host's lease too: the host is then chosen first (hosts.pick), so that its lease is decided
with the rest, at the same moment and in the same round trip.  In one process the host is chosen
when the request is forwarded, among the hosts with room then (hosts.first, else hosts.wait in
their fair queue), within what is left of the same queue_timeout: a request waits at most
queue_timeout in all, whichever queues it passes through.
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

    __slots__ = ("ticket", "member", "wanted", "deadline")

    def __init__(self, ticket: Ticket, member: Member | None = None, wanted: Request | None = None,
                 deadline: float = 0.0) -> None:
        self.ticket = ticket      # for state.finish; with `member`, it also holds that host's shared lease
        self.member = member      # the host, when its slot is a lease of the state (else None: chosen later)
        self.wanted = wanted      # what routing knows of the request, with `member`
        self.deadline = deadline  # loop time when queue_timeout runs out for any further wait

    @property
    def holds_host(self) -> bool:
        """The ticket holds the host's slot (a lease the state moves on a failover)."""
        return self.member is not None

    def time_left(self) -> float:
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


async def admit(gate: Gate, key: KeyEntry, client: str, route: Route, model: str | None, host_name: str | None,
                reserve: int, gone: "asyncio.Future[None]") -> Grant:
    """Decide the request's admission; raises what the state raises (429, 503, ClientGone) or what
    choosing a host does (UnknownHost, NoUpstream)."""
    state, hosts = gate.state, gate.hosts
    deadline = asyncio.get_running_loop().time() + gate.policies.queue_timeout
    if state.shares_hosts and route.generation and hosts.several:
        member, wanted = hosts.pick(route, model, host_name)
        ticket = await state.admit(key, client, True, gone, member.name, member.settings.max_concurrent, reserve)
        hosts.take(member)
        return Grant(ticket, member, wanted, deadline)
    slot = gate.policies.slots_on and route.generation
    return Grant(await state.admit(key, client, route.generation, gone if slot else None, reserve=reserve),
                 deadline=deadline)
