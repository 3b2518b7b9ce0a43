"""Rate limits, bans, the client address, and the fair concurrency gate.  Pure logic: no asyncio.

Every table is an LRU bounded by `max_tracked` entries, so a flood from many
addresses costs a fixed amount of memory: the least recently seen address is
forgotten first (and starts again with a full bucket).  Time comes from the
caller (`now`, seconds on a monotonic clock), so tests use a fake clock.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from functools import lru_cache
from typing import Any, Hashable, Iterable

from ..config.model import Ban, Rate


class RateTable:
    """Token buckets keyed by address or key name."""

    def __init__(self, max_tracked: int = 65536) -> None:
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def hit(self, who: Hashable, rate: Rate, now: float) -> float:
        """0 if one more request is allowed now, else the seconds until it would be."""
        b = self._buckets.get(who)
        if b is None:
            b = self._buckets[who] = [float(rate.count), now]
            if len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(who)
            b[0] = min(float(rate.count), b[0] + (now - b[1]) * rate.count / rate.per)
            b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return 0.0
        return (1.0 - b[0]) * rate.per / rate.count

    def __len__(self) -> int:
        return len(self._buckets)


class BanTable:
    """Failed authentications per address; too many within a window bans the address."""

    def __init__(self, ban: Ban, max_tracked: int = 65536) -> None:
        self.ban = ban
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, list[float]] = OrderedDict()  # addr -> [count, window start]
        self._banned: OrderedDict[str, float] = OrderedDict()          # addr -> ban ends

    def retry_after(self, addr: str, now: float) -> float:
        """Seconds left on a ban, 0 when the address is not banned."""
        until = self._banned.get(addr)
        if until is None:
            return 0.0
        if now >= until:
            del self._banned[addr]
            return 0.0
        return until - now

    def failure(self, addr: str, now: float) -> bool:
        """Record one failed authentication; True when this one starts a ban."""
        if not self.ban.after_failures:
            return False
        f = self._failures.get(addr)
        if f is None or now - f[1] >= self.ban.window:
            f = self._failures[addr] = [0.0, now]
            if len(self._failures) > self.max_tracked:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(addr)
        f[0] += 1
        if f[0] < self.ban.after_failures:
            return False
        del self._failures[addr]
        self._banned[addr] = now + self.ban.duration
        self._banned.move_to_end(addr)
        if len(self._banned) > self.max_tracked:
            self._banned.popitem(last=False)
        return True

    def clear(self) -> None:
        self._failures.clear()
        self._banned.clear()

    def sizes(self) -> tuple[int, int]:
        return len(self._failures), len(self._banned)


def retry_after_header(seconds: float) -> tuple[str, str]:
    return ("Retry-After", str(max(1, math.ceil(seconds))))


# --- who is the client ------------------------------------------------------------

@lru_cache(maxsize=4096)
def address_bucket(addr: str) -> str:
    """What rates and bans count by: an IPv4 address, or the /64 of an IPv6 one.

    One IPv6 host usually holds a whole /64, so counting single addresses
    would let it step around every limit.
    """
    if ":" not in addr:
        return addr
    try:
        ip = ipaddress.IPv6Address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


class TrustedProxies:
    def __init__(self, cidrs: Iterable[str]) -> None:
        self.nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def trusts(self, addr: str) -> bool:
        if not self.nets:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.nets)

    def client_address(self, peer: str, values: list[bytes], header: str = "x-forwarded-for") -> str:
        """The socket peer, unless it is a trusted proxy: then the nearest untrusted hop it names.

        Only the one configured header is read (`values` are its fields in
        order), as nginx's real_ip_header does: a client's own copy of any
        other forwarding header is ignored, so a proxy that writes only
        `Forwarded` cannot be bypassed with a client's `X-Forwarded-For`.
        Walking the hops from the right means a client cannot choose its
        address by sending its own header through a trusted proxy.
        """
        if not self.trusts(peer):
            return peer
        hops: list[str] = []
        for v in values:
            text = v.decode("latin-1")
            if header == "forwarded":
                hops.extend(_forwarded_for(text))
            elif header == "x-real-ip":
                hops = [text.strip()]  # one address; the last field is the nearest proxy's
            else:
                hops.extend(h.strip() for h in text.split(","))
        addr = peer
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return addr  # garbage: stop at the last address we could believe
            addr = hop
            if not self.trusts(hop):
                return hop
        return addr


def _forwarded_for(value: str) -> list[str]:
    """The for= addresses of a Forwarded field (RFC 7239), ports and brackets removed."""
    out = []
    for element in value.split(","):
        for pair in element.split(";"):
            k, _, val = pair.strip().partition("=")
            if k.lower() == "for":
                val = val.strip().strip('"')
                if val.startswith("["):
                    val = val[1:].split("]", 1)[0]
                elif val.count(":") == 1:
                    val = val.split(":", 1)[0]
                out.append(val)
    return out


# --- the concurrency gate ------------------------------------------------------------

class QueueFull(Exception):
    pass


class ConcurrencyGate:
    """Generations in flight: a global limit, per-key limits, and a fair queue.

    Waiters queue per key; a freed slot goes to the keys in round-robin
    order, so one key with a hundred waiting requests cannot starve a key
    with one.  Waiters are opaque objects owned by the caller.
    """

    def __init__(self, max_total: int | None, max_queue: int = 1024) -> None:
        self.max_total = max_total
        self.max_queue = max_queue
        self.running: dict[str, int] = {}
        self.total = 0
        self._queues: OrderedDict[str, deque[Any]] = OrderedDict()  # round-robin order of keys
        self.queued = 0

    def _fits(self, key: str, key_limit: int | None) -> bool:
        if self.max_total is not None and self.total >= self.max_total:
            return False
        return key_limit is None or self.running.get(key, 0) < key_limit

    def try_acquire(self, key: str, key_limit: int | None) -> bool:
        if key in self._queues or not self._fits(key, key_limit):
            return False  # someone of this key is already waiting: keep the order
        self._take(key)
        return True

    def _take(self, key: str) -> None:
        self.running[key] = self.running.get(key, 0) + 1
        self.total += 1

    def enqueue(self, key: str, key_limit: int | None, waiter: Any) -> None:
        if self.queued >= self.max_queue:
            raise QueueFull()
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
        q.append((waiter, key_limit))
        self.queued += 1

    def cancel(self, key: str, waiter: Any) -> bool:
        """Remove a waiter that gave up; False if it was already granted a slot."""
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

    def release(self, key: str) -> list[Any]:
        """Free one slot of `key`; returns the waiters that now hold a slot (wake them)."""
        n = self.running.get(key, 0) - 1
        if n > 0:
            self.running[key] = n
        else:
            self.running.pop(key, None)
        self.total -= 1
        return self.grant()

    def grant(self) -> list[Any]:
        woken: list[Any] = []
        progress = True
        while progress and self._queues:
            progress = False
            for key in list(self._queues):
                q = self._queues[key]
                waiter, key_limit = q[0]
                if not self._fits(key, key_limit):
                    if self.max_total is not None and self.total >= self.max_total:
                        return woken
                    continue
                q.popleft()
                self.queued -= 1
                self._take(key)
                woken.append(waiter)
                # This key goes to the back of the round-robin order.
                del self._queues[key]
                if q:
                    self._queues[key] = q
                progress = True
                break
        return woken
