"""Generations in flight: counts per key, per upstream host and in all, and the fair queue.  Pure: no asyncio.

`Occupancy` counts what runs; `FairQueue` holds who waits, per key, served round-robin
across keys so one key with a hundred waiting requests cannot starve a key with one;
`ConcurrencyGate` is both, deciding at once (one process).  With shared state the
decision is Redis's and arrives later, so that backend uses the two parts on their own.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Callable, Sequence

DEFAULT_HOST = "default"   # the upstream's name while there is one upstream


class QueueFull(Exception):
    pass


class FairQueue:
    """Waiting items per key; keys take turns (a key served goes to the back of the order)."""

    def __init__(self, max_queue: int = 1024) -> None:
        self.max_queue = max_queue
        self.queued = 0
        self._queues: OrderedDict[str, deque[Any]] = OrderedDict()   # round-robin order of keys

    def __contains__(self, key: str) -> bool:
        return key in self._queues

    def push(self, key: str, item: Any) -> None:
        if self.queued >= self.max_queue:
            raise QueueFull()
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
        q.append(item)
        self.queued += 1

    def remove(self, key: str, match: Callable[[Any], bool]) -> Any:
        """Take out the first item of `key` that `match`es; None if there is none (it was served)."""
        q = self._queues.get(key)
        if q is None:
            return None
        for i, item in enumerate(q):
            if match(item):
                del q[i]
                self.queued -= 1
                if not q:
                    del self._queues[key]
                return item
        return None

    def keys(self) -> list[str]:
        return list(self._queues)

    def items(self, key: str) -> Sequence[Any]:
        """The items of `key` in their order (to be read, not changed)."""
        return self._queues.get(key, ())

    def head(self, key: str) -> Any:
        return self._queues[key][0]

    def pop(self, key: str) -> Any:
        """Serve the first item of `key`; the key goes to the back of the round-robin order."""
        q = self._queues.pop(key)
        item = q.popleft()
        self.queued -= 1
        if q:
            self._queues[key] = q
        return item

    def served(self, key: str) -> None:
        """`key` was just served (an item taken out with remove): it goes to the back of the order."""
        q = self._queues.pop(key, None)
        if q is not None:
            self._queues[key] = q

    def in_turn(self, limit: int) -> list[tuple[str, Any]]:
        """Up to `limit` (key, item) in the order they would be served: every key's first, then seconds, ..."""
        out: list[tuple[str, Any]] = []
        depth = 0
        while len(out) < limit:
            added = False
            for key, q in self._queues.items():
                if depth < len(q):
                    out.append((key, q[depth]))
                    added = True
                    if len(out) == limit:
                        break
            if not added:
                break
            depth += 1
        return out


class HoldsQueue:
    """An owner of a FairQueue, whose length and cap are read and set through it."""

    queue: FairQueue

    @property
    def queued(self) -> int:
        return self.queue.queued

    @property
    def max_queue(self) -> int:
        return self.queue.max_queue

    @max_queue.setter
    def max_queue(self, value: int) -> None:
        self.queue.max_queue = value


class Occupancy:
    """Slots in use: per key, per upstream host, in all."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.hosts: dict[str, int] = {}
        self.total = 0

    def fits(self, key: str, key_limit: int | None, host: str, host_limit: int | None,
             total_limit: int | None) -> bool:
        if total_limit is not None and self.total >= total_limit:
            return False
        if host_limit is not None and self.hosts.get(host, 0) >= host_limit:
            return False
        return key_limit is None or self.running.get(key, 0) < key_limit

    def take(self, key: str, host: str = DEFAULT_HOST) -> None:
        self.running[key] = self.running.get(key, 0) + 1
        self.hosts[host] = self.hosts.get(host, 0) + 1
        self.total += 1

    def drop(self, key: str, host: str = DEFAULT_HOST) -> None:
        for table, name in ((self.running, key), (self.hosts, host)):
            n = table.get(name, 0) - 1
            if n > 0:
                table[name] = n
            else:
                table.pop(name, None)
        self.total -= 1


class ConcurrencyGate(Occupancy, HoldsQueue):
    """Generations in flight: a global limit, per-key limits, and a fair queue.

    Waiters are opaque objects owned by the caller.  (In one process each
    host's max_concurrent is counted by the engine's HostSet, not here.)
    """

    def __init__(self, max_total: int | None, max_queue: int = 1024) -> None:
        super().__init__()
        self.max_total = max_total
        self.queue = FairQueue(max_queue)

    def try_acquire(self, key: str, key_limit: int | None) -> bool:
        if key in self.queue or not self.fits(key, key_limit, DEFAULT_HOST, None, self.max_total):
            return False  # someone of this key is already waiting: keep the order
        self.take(key)
        return True

    def enqueue(self, key: str, key_limit: int | None, waiter: Any) -> None:
        self.queue.push(key, (waiter, key_limit))

    def cancel(self, key: str, waiter: Any) -> bool:
        """Remove a waiter that gave up; False if it was already granted a slot."""
        return self.queue.remove(key, lambda item: item[0] is waiter) is not None

    def release(self, key: str) -> list[Any]:
        """Free one slot of `key`; returns the waiters that now hold a slot (wake them)."""
        self.drop(key)
        return self.grant()

    def grant(self) -> list[Any]:
        woken: list[Any] = []
        queue = self.queue
        progress = True
        while progress and queue.queued:
            progress = False
            for key in queue.keys():
                waiter, key_limit = queue.head(key)
                if not self.fits(key, key_limit, DEFAULT_HOST, None, self.max_total):
                    if self.max_total is not None and self.total >= self.max_total:
                        return woken
                    continue
                queue.pop(key)
                self.take(key)
                woken.append(waiter)
                progress = True
                break
        return woken
