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
    """Waiting items per key; keys take turns, in proportion to their weights.

    Weighted round robin with credit (deficit round robin): a key at the front of the order is
    served up to its weight in a row (a key of weight 4 gets 4 grants for each one a key of
    weight 1 gets), then goes to the back, its credit topped up by its weight (a fractional
    weight carries over to its next turn).  Every waiting key comes to the front once a round,
    so none starves.
    """

    def __init__(self, max_queue: int = 1024) -> None:
        self.max_queue = max_queue
        self.queued = 0
        self._queues: OrderedDict[str, deque[Any]] = OrderedDict()   # the order of turns
        self._credit: dict[str, float] = {}    # grants left in the key's turn (at least 1 while it waits)
        self._weight: dict[str, float] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._queues

    def push(self, key: str, item: Any, weight: float = 1.0) -> None:
        if self.queued >= self.max_queue:
            raise QueueFull()
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
            self._credit[key] = weight
        self._weight[key] = weight
        q.append(item)
        self.queued += 1

    def _gone(self, key: str) -> None:
        del self._queues[key]
        del self._credit[key], self._weight[key]

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
                    self._gone(key)
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
        """Serve the first item of `key` (one grant of its turn)."""
        item = self._queues[key].popleft()
        self.queued -= 1
        self.served(key)
        return item

    def served(self, key: str) -> None:
        """`key` was just served (an item taken out with pop or remove): one grant of its turn; at the
        end of its turn it goes to the back of the order."""
        q = self._queues.get(key)
        if q is None:
            return
        if not q:
            self._gone(key)
            return
        credit = self._credit[key] - 1
        if credit < 1:
            self._queues.move_to_end(key)
            credit += self._weight[key]
        self._credit[key] = credit

    def in_turn(self, limit: int) -> list[tuple[str, Any]]:
        """Up to `limit` (key, item) in the order they would be served: each key's turn (its credit
        now, its weight in later rounds), round after round."""
        out: list[tuple[str, Any]] = []
        taken = dict.fromkeys(self._queues, 0)
        turn = {key: int(c) for key, c in self._credit.items()}
        while len(out) < limit:
            added = False
            for key, q in self._queues.items():
                end = min(len(q), taken[key] + turn[key])
                for i in range(taken[key], end):
                    out.append((key, q[i]))
                    if len(out) == limit:
                        return out
                added = added or end > taken[key]
                taken[key] = end
                turn[key] = max(1, int(self._weight[key]))
            if not added:
                break
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

    def enqueue(self, key: str, key_limit: int | None, waiter: Any, weight: float = 1.0) -> None:
        self.queue.push(key, (waiter, key_limit), weight)

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
