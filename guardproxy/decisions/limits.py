"""Rate limits, bans and the client address.  Pure logic: no asyncio.

Every table is an LRU bounded by `max_tracked` entries, so a flood from many
addresses costs a fixed amount of memory: the least recently seen address is
forgotten first (and starts again with a full bucket).  Time comes from the
caller (`now`, seconds on a monotonic clock), so tests use a fake clock.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from functools import lru_cache
from typing import Hashable, Iterable

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

    def impose(self, addr: str, until: float) -> None:
        """A ban decided elsewhere (another instance, through shared state), remembered here until it ends."""
        self._banned[addr] = until
        self._banned.move_to_end(addr)
        if len(self._banned) > self.max_tracked:
            self._banned.popitem(last=False)

    def clear(self) -> None:
        self._failures.clear()
        self._banned.clear()

    def lift(self, addr: str | None) -> bool:
        """Forget the ban and the failures of one address (its bucket), or of all (None); True if one was banned."""
        if addr is None:
            banned = bool(self._banned)
            self.clear()
            return banned
        self._failures.pop(addr, None)
        return self._banned.pop(addr, None) is not None

    def sizes(self) -> tuple[int, int]:
        return len(self._failures), len(self._banned)


def rate_share(rate: Rate, n: int) -> Rate:
    """One of `n` instances' part of a rate they share: count/n per period (rounded down), or, when
    that is under one, one request per the longer period that keeps the sum."""
    if n <= 1:
        return rate
    if rate.count >= n:
        return Rate(rate.count // n, rate.per)
    return Rate(1, rate.per * n / rate.count)


def limit_share(limit: int | None, n: int) -> int | None:
    """One of `n` instances' part of a concurrency limit: limit/n rounded down, but at least one."""
    return limit if limit is None or n <= 1 else max(1, limit // n)


def retry_after_header(seconds: float) -> tuple[str, str]:
    # Whole seconds, rounded up, but not for float noise: (now + 900) - now can come out a hair
    # above 900 when two readings of a coarse clock (Windows' ticks every 15.6 ms) are equal.
    return ("Retry-After", str(max(1, math.ceil(round(seconds, 6)))))


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

    def client_address(self, peer: str, values: list[bytes], header: str) -> str:
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
