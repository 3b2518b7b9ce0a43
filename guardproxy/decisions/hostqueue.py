"""Generations waiting for an Ollama host with room (and, in process, their key's slot), served fairly
across keys.  Pure logic: no asyncio."""

from __future__ import annotations

import enum
from typing import Callable, Generic, TypeVar

from .concurrency import FairQueue, HoldsQueue, QueueFull
from .routing import Host, Request, Verdict

W = TypeVar("W")

TooManyWaiting = QueueFull   # the queue is at its max_queue


class Admitted(enum.Enum):
    """What the rest of a waiter's decision (its key's slot, its budget) says once a host has room."""
    YES = "yes"          # granted: it goes to the host
    NOT_KEY = "not_key"  # its key has no slot free: none of the key's waiters can go now
    NOT_ANY = "not_any"  # no generation can start now (a global limit): the pass ends
    REFUSED = "refused"  # refused (its budget, a ban): out of the queue, without a grant of its key's turn


class Waiting(HoldsQueue, Generic[W]):
    """Generations waiting for a host with room (choose said WAIT), served fairly across keys.

    The fair queue of the concurrency gate (concurrency.FairQueue): a queue
    per key, keys served in round-robin order, so one key with a hundred
    waiting requests cannot starve a key with one.  A freed slot goes to the
    first waiter, in that order, that `place` now puts on a host; within a
    key, a request whose hosts are all still full does not hold up one behind
    it that the freed host can take.  Waiters are opaque objects owned by the
    caller.  A waiter a host has room for is decided in full then (`admit`): its
    key may have no slot free (the key's waiters are skipped), nothing may start
    (the pass ends), or it is refused (it leaves the queue).

    A pass stops as soon as no host has room (`room`), as the gate's does at
    its global limit: placing a thousand waiters on full hosts costs a
    thousand `choose` calls and finds nothing.  So a waiter whose model no
    host lists any more (routing sends it to the least busy host, full or
    not, for that host's own 404) waits for a free slot like the others.
    """

    def __init__(self, max_queue: int = 1024) -> None:
        self.queue = FairQueue(max_queue)

    def enqueue(self, key: str, req: Request, waiter: W, weight: float = 1.0) -> None:
        """Raises TooManyWaiting when the queue is full; `weight`: the key's (FairQueue)."""
        self.queue.push(key, (waiter, req), weight)

    def cancel(self, key: str, waiter: W) -> bool:
        """Remove a waiter that gave up; False if it was already granted a host."""
        return self.queue.remove(key, lambda item: item[0] is waiter) is not None

    def grant(self, place: Callable[[Request], Host | Verdict], room: Callable[[], bool],
              admit: Callable[[W, Host], Admitted] | None = None) -> list[tuple[W, Host]]:
        """The waiters that now have a host (wake them); each host's in_flight is counted at once,
        so the next placement sees it.  `room()`: some host that takes requests has a free slot.
        `admit(waiter, host)`: the rest of the waiter's decision, made at the moment it would
        get `host` (None: nothing else to decide)."""
        granted: list[tuple[W, Host]] = []
        queue = self.queue
        progress = True
        while progress and queue.queued and room():
            progress = False
            for key in queue.keys():
                for item in queue.items(key):
                    host = place(item[1])
                    if not isinstance(host, Host):
                        continue
                    verdict = Admitted.YES if admit is None else admit(item[0], host)
                    if verdict is Admitted.NOT_KEY:
                        break
                    if verdict is Admitted.NOT_ANY:
                        return granted
                    queue.remove(key, lambda x: x is item)
                    if verdict is Admitted.YES:
                        queue.served(key)   # one grant of this key's turn
                        host.in_flight += 1
                        granted.append((item[0], host))
                    progress = True
                    break
                if progress:
                    break
        return granted
