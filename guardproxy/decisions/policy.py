"""The policy checks of one request, in pipeline order, over live-reloadable settings.

Pure logic: no asyncio.  `Policies` holds the tables that outlive a config
reload (rate buckets, failure counts, bans, slots in use) and the settings
that a reload replaces (CORS origins, rates, trusted proxies).
"""

from __future__ import annotations

from ..config.model import Config, KeyEntry
from .cors import CorsPolicy
from ..wire.errors import ServiceUnavailable, TooManyRequests
from ..wire.heads import RequestHead
from .concurrency import ConcurrencyGate
from .limits import (BanTable, RateTable, TrustedProxies, address_bucket, rate_share,
                     retry_after_header)


class Banned(TooManyRequests):
    message = "too many failed authentications; try again later"
    reason = "ban"


class RateLimited(TooManyRequests):
    message = "rate limit exceeded"


class KeyRateLimited(RateLimited):
    message = "rate limit exceeded for this key"


class BudgetExceeded(TooManyRequests):
    message = "token budget exceeded"
    reason = "budget"


class LimitsUnavailable(ServiceUnavailable):
    """Shared limits cannot be checked (Redis down) and [cluster] on_redis_error = "closed"."""
    message = "limits unavailable; try again later"


class Policies:
    def __init__(self, config: Config) -> None:
        lim = config.limits
        self.ip_rates = RateTable(lim.max_tracked)
        self.key_rates = RateTable(lim.max_tracked)
        self.bans = BanTable(config.ban, lim.max_tracked)
        self.gate = ConcurrencyGate(lim.max_concurrent, lim.max_queue)
        self.share = 1  # rates are this instance's part of limits shared by `share` instances
        self.apply(config)

    def apply(self, config: Config) -> list[object]:
        """Take new settings; the tables (buckets, bans, slots in use) keep their state.

        Returns the queued waiters that the new settings admit at once (a
        larger max_concurrent frees room): the caller must wake them, since
        this module knows nothing of how they wait.
        """
        lim = config.limits
        self.cors = CorsPolicy(config.cors)
        self.configured_per_ip = lim.per_ip
        self.set_share(self.share)
        self.proxies = TrustedProxies(lim.trusted_proxies)
        self.address_header_name = lim.client_address_header
        self.address_header = lim.client_address_header.encode()
        self.queue_timeout = lim.queue_timeout
        self.bans.ban = config.ban
        if not config.ban.after_failures:
            self.bans.clear()  # bans turned off: lift the running ones too
        for t in (self.ip_rates, self.key_rates):
            t.max_tracked = lim.max_tracked
        self.bans.max_tracked = lim.max_tracked
        self.gate.max_queue = lim.max_queue
        self.gate.max_total = lim.max_concurrent
        # Any key with its own limit, or a global limit, means generations take a slot.
        self.slots_on = lim.max_concurrent is not None or any(k.max_concurrent for k in config.keys)
        return self.gate.grant()

    def set_share(self, n: int) -> None:
        """Enforce 1/n of the rates (the in-process fallback of n instances that lost their shared state)."""
        self.share = n
        self.per_ip = self.configured_per_ip if self.configured_per_ip is None else rate_share(self.configured_per_ip, n)

    def client_address(self, peer: str, req: RequestHead) -> str:
        if not self.proxies.nets:
            return peer
        name = self.address_header
        return self.proxies.client_address(peer, [v for _, n, v in req.headers if n == name], self.address_header_name)

    def check_ban(self, client: str, now: float) -> None:
        """Banned while the address is."""
        wait = self.bans.retry_after(address_bucket(client), now)
        if wait:
            raise Banned(headers=[retry_after_header(wait)])

    def before_auth(self, client: str, now: float) -> None:
        """Bans first (before any key is looked at), then the per-address rate."""
        self.check_ban(client, now)
        if self.per_ip is not None:
            wait = self.ip_rates.hit(address_bucket(client), self.per_ip, now)
            if wait:
                raise RateLimited(headers=[retry_after_header(wait)])

    def auth_failed(self, client: str, now: float) -> None:
        self.bans.failure(address_bucket(client), now)

    def after_auth(self, key: KeyEntry, now: float) -> None:
        if key.rate is not None:
            wait = self.key_rates.hit(key.name, rate_share(key.rate, self.share), now)
            if wait:
                raise KeyRateLimited(headers=[retry_after_header(wait)])
