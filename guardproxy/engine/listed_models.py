"""The models the hosts list, and whether each host is up: what the metrics read at a scrape.

A key holder may name any model in a request; counting tokens under every
name sent would let one client add series without end.  So a `model` label
is a name some host's /api/tags lists, or "other".

The lists live in the hosts' snapshot (hosts.py), kept by the health checks
(health.py).  With the checks off (`health_interval = 0`) a scrape fetches
the lists that are older than a minute itself, so a gate nobody measures
sends its hosts nothing of its own (metrics.py keeps the names it counts
until a list is known).
"""

from __future__ import annotations

import asyncio

from ..decisions.routing import canonical_model
from .health import TAGS, refresh
from .hosts import HostSet, Member

OTHER = "other"
REFRESH = 60.0      # seconds a list fetched for the metrics stays good (with the checks off)
READY_WAIT = 2.0    # how long a scrape waits for those fetches


def listed_name(name: str, known: frozenset[str]) -> str:
    """The label of a model name as a request or response wrote it: the listed name Ollama resolves
    it to ("llama3.2" is "llama3.2:latest"), or OTHER."""
    n = canonical_model(name)   # (the spelling the hosts' lists are kept in)
    return n if n in known else OTHER


class ListedModels:
    def __init__(self, hosts: HostSet) -> None:
        self.hosts = hosts

    def up(self, m: Member) -> bool:
        """The host is up: by its health checks, or with the checks off, by its last list fetch."""
        # ready() fetched every older list just before; one that is still old did not come.
        return m.host.up and (self.hosts.checks_on or m.tags_at >= self.hosts.clock() - REFRESH - READY_WAIT)

    async def ready(self) -> None:
        """With the checks off, fetch the lists older than REFRESH (waiting READY_WAIT at most)."""
        if self.hosts.checks_on:
            return
        oldest = self.hosts.clock() - REFRESH
        stale = [m for m in self.hosts.members.values() if m.tags_at < oldest or m.tags_due]
        if not stale:
            return
        try:
            async with asyncio.timeout(READY_WAIT):
                await asyncio.gather(*(refresh(self.hosts, m, TAGS) for m in stale))
        except TimeoutError:
            pass  # the fetches go on; the next scrape reads them
