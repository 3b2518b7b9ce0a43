"""Generations waiting for an Ollama host with room, served fairly across keys.  Pure logic: no asyncio."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Generic, TypeVar

from .routing import Host, Request, Verdict

W = TypeVar("W")


class TooManyWaiting(Exception):
    pass


class Waiting(Generic[W]):
    """Generations waiting for a host with room (choose said WAIT), served fairly across keys.

    As limits.ConcurrencyGate: a queue per key, keys served in round-robin
    order, so one key with a hundred waiting requests cannot starve a key
    with one.  A freed slot goes to the first waiter, in that order, that
    `place` now puts on a host; within a key, a request whose hosts are all
    still full does not hold up one behind it that the freed host can take.
    Waiters are opaque objects owned by the caller.
    """

    def __init__(self, max_queue: int = 1024) -> None:
        self.max_queue = max_queue
        self._queues: OrderedDict[str, deque[tuple[W, Request]]] = OrderedDict()
        self.queued = 0

    def enqueue(self, key: str, req: Request, waiter: W) -> None:
        if self.queued >= self.max_queue:
            raise TooManyWaiting()
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
        q.append((waiter, req))
        self.queued += 1

    def cancel(self, key: str, waiter: W) -> bool:
        """Remove a waiter that gave up; False if it was already granted a host."""
        q = self._queues.get(key)
        if q is None:
            return False
        for i, (w, _) in enumerate(q):
            if w is waiter:
                del q[i]
                self.queued -= 1
                if not q:
                    del self._queues[key]
                return True
        return False

    def grant(self, place: Callable[[Request], Host | Verdict]) -> list[tuple[W, Host]]:
        """The waiters that now have a host (wake them); each host's in_flight is counted at once,
        so the next placement sees it."""
        granted: list[tuple[W, Host]] = []
        progress = True
        while progress and self._queues:
            progress = False
            for key, q in self._queues.items():
                for i, (waiter, req) in enumerate(q):
                    host = place(req)
                    if isinstance(host, Host):
                        del q[i]
                        self.queued -= 1
                        host.in_flight += 1
                        granted.append((waiter, host))
                        # This key goes to the back of the round-robin order.
                        del self._queues[key]
                        if q:
                            self._queues[key] = q
                        progress = True
                        break
                if progress:
                    break
        return granted
