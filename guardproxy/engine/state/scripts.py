"""The Lua scripts of shared state (one per round trip, each atomic in Redis, each on Redis's own clock),
and how their arguments are encoded (Calls).

    ADMIT        before forwarding: ban, per-address and per-key rate, token budget, a slot
    AUTH_FAILED  a refused key: ban, per-address rate, count the failure (may start a ban)
    TAKE         slots for waiting requests, in their fair order (a grant pass)
    MOVE         a generation's host lease to another host (a failover), if that host has room
    FINISH       after a request: free its slot (wake waiters if any), release its reservation, add its
                 tokens; each request's ID is applied once (a FINISH sent again after a timeout is a no-op)
    RENEW        every lease_ttl/3: this instance's heartbeat, its slots' leases; returns live instances

Keys (after [cluster] key_prefix), every one named in KEYS:
    ban:ADDR fail:ADDR            a ban (expires with it); failed authentications in the window
    rate:ip:ADDR rate:key:NAME    GCRA: the theoretical arrival time in µs (expires when the bucket is full)
    tokens:UNIT:NAME              a hash, bucket index -> tokens (decisions/budget.py, the same arithmetic)
    reserved:UNIT:NAME            a sorted set of running generations' reservations, "ID#TOKENS", scored by
                                  expiry (ms), renewed with the leases: a dead instance's reservations lapse
    done:ID                       a FINISH that was applied (expires with the lease, twice lease_ttl)
    slots:key:NAME slots:host:HOST slots:all
                                  sorted sets of leases scored by expiry (ms): a member is a running generation
    queued                        set while any instance has requests waiting: FINISH then publishes on `freed`
    instances                     sorted set of instance ids scored by expiry (the heartbeat)

Rates are GCRA with the burst set to the count (redis-cell's semantics), which is the token
bucket decisions.limits.RateTable keeps in process: a full bucket of `count`, refilled evenly.
"""

from __future__ import annotations

from functools import lru_cache

from ...config.model import Ban, Budget, KeyEntry, Rate
from ...decisions.budget import BUCKETS, bucket_seconds
from .commands import Args, Script, bulk, one, script_tail


@lru_cache(maxsize=4096)
def address_keys(prefix: bytes, addr: str) -> tuple[bytes, bytes, bytes]:
    """ban:ADDR, fail:ADDR, rate:ip:ADDR"""
    a = addr.encode()
    return prefix + b"ban:" + a, prefix + b"fail:" + a, prefix + b"rate:ip:" + a


@lru_cache(maxsize=4096)
def key_keys(prefix: bytes, name: str, host: str) -> tuple[bytes, bytes, bytes]:
    """rate:key:NAME, slots:key:NAME, slots:host:HOST"""
    n = name.encode()
    return prefix + b"rate:key:" + n, prefix + b"slots:key:" + n, prefix + b"slots:host:" + host.encode()


@lru_cache(maxsize=4096)
def tokens_key(prefix: bytes, name: str, unit: str) -> bytes:
    """tokens:UNIT:NAME"""
    return prefix + b"tokens:" + unit.encode() + b":" + name.encode()


@lru_cache(maxsize=4096)
def reserved_key(prefix: bytes, name: str, unit: str) -> bytes:
    """reserved:UNIT:NAME"""
    return prefix + b"reserved:" + unit.encode() + b":" + name.encode()


def reservation_member(lease: bytes, tokens: int) -> bytes:
    """A reservation in reserved:UNIT:NAME: the request's ID and its tokens."""
    return b"%s#%d" % (lease, tokens)

_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# Returns 0 when allowed (and takes it), else µs until it would be.
_GCRA = """
local function gcra(key, count, period)
  local interval = period / count
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - period
  if now < allow_at then return allow_at - now end
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
  return 0
end
"""

# The window's total, and (when it is at `budget`) ms until enough of it has passed (0: never by
# the window alone).  Then what running requests reserved, and whether `need` more fits
# (decisions.budget.fit_limit): {code, wait_ms, total} as ADMIT returns them, code 0 or 4.
_WINDOW = """
local function window(key, size, budget)
  local now_s = now / 1000000
  local current = math.floor(now_s / size)
  local h = redis.call('HGETALL', key)
  local total, old, live = 0, {}, {}
  for i = 1, #h, 2 do
    local b, n = tonumber(h[i]), tonumber(h[i + 1])
    if b <= current - BUCKETS then old[#old + 1] = h[i] else total = total + n; live[#live + 1] = {b, n} end
  end
  if #old > 0 then redis.call('HDEL', key, unpack(old)) end
  if total < budget then return total, 0 end
  table.sort(live, function(x, y) return x[1] < y[1] end)
  local left = total
  for _, e in ipairs(live) do
    left = left - e[2]
    if left < budget then return total, math.ceil(((e[1] + BUCKETS) * size - now_s) * 1000) end
  end
  return total, 0
end
local function reserved(key, now_ms)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  local held = 0
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do held = held + tonumber(string.match(m, '#(%d+)$')) end
  return held
end
local function fits(tokens, reservations, size, budget, need, now_ms)
  local limit = budget - reserved(reservations, now_ms) - math.max(need, 1) + 1
  local total, wait = window(tokens, size, limit)
  if total < limit then return 0, 0, total end
  if need > budget then return 4, -1, total end
  if wait <= 0 then wait = 1000 end
  return 4, wait, total
end
local function reserve(key, lease, need, until_ms, ttl_ms)
  redis.call('ZADD', key, until_ms, lease .. '#' .. need)
  redis.call('PEXPIRE', key, ttl_ms * 2)
end
""".replace("BUCKETS", str(BUCKETS))

_SLOTS = """
local purged = {}
local function count(key, now_ms)
  if not purged[key] then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
    purged[key] = true
  end
  return redis.call('ZCARD', key)
end
local function full(key, limit, now_ms)
  return limit > 0 and count(key, now_ms) >= limit
end
local function hold(key, lease, until_ms, ttl_ms)
  redis.call('ZADD', key, until_ms, lease)
  redis.call('PEXPIRE', key, ttl_ms * 2)
end
local function room(keys, limits, now_ms)
  for i = 1, #keys do
    if full(keys[i], limits[i], now_ms) then return false end
  end
  return true
end
-- A slot: `lease` into every set of `keys` if none is at its limit (0: none), else nothing.
local function take(keys, limits, lease, now_ms, ttl_ms)
  if not room(keys, limits, now_ms) then return false end
  for i = 1, #keys do
    count(keys[i], now_ms)
    hold(keys[i], lease, now_ms + ttl_ms, ttl_ms)
  end
  return true
end
"""

# KEYS: ban, rate:ip, rate:key, tokens, slots:key, slots:host, slots:all, queued, reserved
# ARGV: slot (0 none, 1 take, 2 queue behind this key's waiters), lease (the request's ID),
#       bans_on, ip_count, ip_period_us, key_count, key_period_us, budget, bucket_s,
#       key_limit, host_limit, total_limit, lease_ttl_ms, queued_ttl_ms, need (tokens to reserve)
# Returns {code, wait_ms, window_total}: 0 admitted, 1 banned, 2 address rate, 3 key rate, 4 budget
# (wait_ms -1: the reservation is larger than the whole budget), 5 wait.  A request admitted
# with a budget holds its reservation; one told to wait is decided again by TAKE.
ADMIT = Script(_CLOCK + _GCRA + _WINDOW + _SLOTS + """
if ARGV[3] == '1' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then return {1, ttl, -1} end
end
local c = tonumber(ARGV[4])
if c > 0 then
  local wait = gcra(KEYS[2], c, tonumber(ARGV[5]))
  if wait > 0 then return {2, math.ceil(wait / 1000), -1} end
end
c = tonumber(ARGV[6])
if c > 0 then
  local wait = gcra(KEYS[3], c, tonumber(ARGV[7]))
  if wait > 0 then return {3, math.ceil(wait / 1000), -1} end
end
local total = -1
local budget, need = tonumber(ARGV[8]), tonumber(ARGV[15])
local now_ms = math.floor(now / 1000)
local ttl = tonumber(ARGV[13])
if budget > 0 then
  local code, wait
  code, wait, total = fits(KEYS[4], KEYS[9], tonumber(ARGV[9]), budget, need, now_ms)
  if code ~= 0 then return {code, wait, total} end
end
local slot = ARGV[1]
if slot == '0' or (slot == '1' and take({KEYS[7], KEYS[5], KEYS[6]},
                                         {tonumber(ARGV[12]), tonumber(ARGV[10]), tonumber(ARGV[11])},
                                         ARGV[2], now_ms, ttl)) then
  if budget > 0 then reserve(KEYS[9], ARGV[2], need, now_ms + ttl, ttl) end
  return {0, 0, total}
end
redis.call('SET', KEYS[8], '1', 'PX', ARGV[14])
return {5, 0, total}
""")

# KEYS: ban, rate:ip, fail
# ARGV: bans_on, ip_count, ip_period_us, after_failures, window_ms, duration_ms
# Returns {code, wait_ms}: 0 counted, 1 banned, 2 address rate, 6 this failure started a ban.
AUTH_FAILED = Script(_CLOCK + _GCRA + """
local bans = ARGV[1] == '1'
if bans then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then return {1, ttl} end
end
local c = tonumber(ARGV[2])
if c > 0 then
  local wait = gcra(KEYS[2], c, tonumber(ARGV[3]))
  if wait > 0 then return {2, math.ceil(wait / 1000)} end
end
if bans then
  local n = redis.call('INCR', KEYS[3])
  if n == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
  if n >= tonumber(ARGV[4]) then
    redis.call('DEL', KEYS[3])
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[6])
    return {6, tonumber(ARGV[6])}
  end
end
return {0, 0}
""")

# KEYS: slots:all, queued, then per candidate: slots:key, slots:host, tokens, reserved
# ARGV: lease_ttl_ms, total_limit, queued_ttl_ms, then per candidate: lease, key_limit, host_limit,
#       budget (0: none), bucket_s, need
# Returns per candidate, in order: 1 granted (its reservation held), 0 still waiting, or a refusal
# by its budget, decided again now: -1 - wait_ms (-1: no Retry-After, it can never fit).
TAKE = Script(_CLOCK + _WINDOW + _SLOTS + """
local now_ms = math.floor(now / 1000)
local ttl, total_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, waiting = {}, false
for i = 1, (#KEYS - 2) / 4 do
  local k, a = 4 * i - 2, 6 * i - 3
  local sets = {KEYS[1], KEYS[k + 1], KEYS[k + 2]}
  local limits = {total_limit, tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])}
  local lease, budget, need = ARGV[a + 1], tonumber(ARGV[a + 4]), tonumber(ARGV[a + 6])
  local code, wait = 0, 0
  if not room(sets, limits, now_ms) then
    out[i] = 0
    waiting = true
  else
    if budget > 0 then code, wait = fits(KEYS[k + 3], KEYS[k + 4], tonumber(ARGV[a + 5]), budget, need, now_ms) end
    if code ~= 0 then
      out[i] = -1 - math.max(wait, 0)
    else
      take(sets, limits, lease, now_ms, ttl)
      if budget > 0 then reserve(KEYS[k + 4], lease, need, now_ms + ttl, ttl) end
      out[i] = 1
    end
  end
end
if waiting then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
return out
""")

# KEYS: slots:host of the host it leaves, slots:host of the host it goes to, queued
# ARGV: lease, the new host's limit, lease_ttl_ms, channel
# Returns 1 (moved) or 0 (the new host is full: the lease stays where it was).
MOVE = Script(_CLOCK + _SLOTS + """
if not take({KEYS[2]}, {tonumber(ARGV[2])}, ARGV[1], math.floor(now / 1000), tonumber(ARGV[3])) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('PUBLISH', ARGV[4], '1') end
return 1
""")

# KEYS: slots:key, slots:host, slots:all, tokens, queued, reserved, done:ID
# ARGV: lease ('' when no slot), tokens, reservation ('' when none), bucket_s,
#       tokens_ttl_ms (the window and a twentieth), channel, done_ttl_ms
# Returns 1, or 0 when this ID was applied already (the call is sent again after a timeout).
FINISH = Script(_CLOCK + """
if not redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[7]) then return 0 end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[6], ARGV[3]) end
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('PUBLISH', ARGV[6], '1') end
end
local n = tonumber(ARGV[2])
if n > 0 then
  local bucket = math.floor(now / 1000000 / tonumber(ARGV[4]))
  redis.call('HINCRBY', KEYS[4], bucket, n)
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return 1
""")

# KEYS: instances, then the sets this instance holds leases in
# ARGV: instance id, lease_ttl_ms, then per set: the number of its leases, the leases
# Returns the number of live instances.
RENEW = Script(_CLOCK + """
local now_ms = math.floor(now / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
local i = 3
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  for j = 1, n do redis.call('ZADD', KEYS[k], now_ms + ttl, ARGV[i + j]) end
  redis.call('PEXPIRE', KEYS[k], ttl * 2)
  i = i + n + 1
end
return redis.call('ZCARD', KEYS[1])
""")


def _rate(rate: Rate | None) -> tuple[int, int]:
    return (rate.count, int(rate.per * 1_000_000)) if rate is not None else (0, 0)


@lru_cache(maxsize=4096)
def _address_block(prefix: bytes, addr: str, failures: bool) -> Args:
    ban, fail, ip_rate = address_keys(prefix, addr)
    return Args.of(ban, ip_rate, fail) if failures else Args.of(ban, ip_rate)


_MODES = [Args.of(0), Args.of(1), Args.of(2)]
_MAX_CACHED = 4096


class Calls:
    """The KEYS and ARGV of each script for one gate, encoded as RESP sends them.

    What does not change from one request to the next (a key's limits, the settings) is
    encoded once per key and kept until the settings change (`configure`).
    """

    def __init__(self, prefix: bytes, lease_ttl: float, queued_ttl: float) -> None:
        self.prefix = prefix
        self.all_slots, self.queued, self.instances = prefix + b"slots:all", prefix + b"queued", prefix + b"instances"
        self.channel = prefix + b"freed"
        self.lease_ttl_ms, self.queued_ttl_ms = int(lease_ttl * 1000), int(queued_ttl * 1000)
        # Per key: (the call's item count, the bytes before the address's keys or the lease, the bytes after).
        self._admit: dict[tuple[str, bool, str, int | None], tuple[int, bytes, bytes, bytes]] = {}
        self._finish: dict[tuple[str, str, Budget | None], tuple[int, bytes, bytes]] = {}
        self.configure(None, Ban(), None)

    def configure(self, per_ip: Rate | None, ban: Ban, max_total: int | None) -> None:
        self.per_ip, self.ban, self.max_total = per_ip, ban, max_total
        self._admit.clear()
        self._finish.clear()
        args = Args.of(1 if ban.after_failures else 0, *_rate(per_ip), ban.after_failures,
                       int(ban.window * 1000), int(ban.duration * 1000))
        keys = _address_block(self.prefix, "", True)
        self._auth = (script_tail(keys, args)[0], bulk(b"%d" % keys.count), args.data)

    def admit(self, addr: str, key: KeyEntry, generation: bool, host: str, host_limit: int | None,
              mode: int, lease: bytes, need: int = 0) -> tuple[int, bytes]:
        """ADMIT's (count, tail); `mode`: 0 no slot, 1 take one, 2 queue behind this key's waiters;
        `need`: the tokens the request reserves of its key's budget."""
        blocks = self._admit.get((key.name, generation, host, host_limit))
        if blocks is None:
            if len(self._admit) >= _MAX_CACHED:
                self._admit.clear()
            blocks = self._admit[(key.name, generation, host, host_limit)] = self._admit_blocks(
                key, generation, host, host_limit)
        count, head, keys, args = blocks   # the count, computed once per key (see _admit_blocks); the bytes as sent
        return count, head + _address_block(self.prefix, addr, False).data + keys + _MODES[mode].data + \
            bulk(lease) + args + bulk(b"%d" % need)

    def _admit_blocks(self, key: KeyEntry, generation: bool, host: str,
                      host_limit: int | None) -> tuple[int, bytes, bytes, bytes]:
        budget = key.tokens if generation else None
        rate_key, key_slots, host_slots = key_keys(self.prefix, key.name, host)
        keys = Args.of(rate_key, tokens_key(self.prefix, key.name, budget.unit) if budget else rate_key,
                       key_slots, host_slots, self.all_slots, self.queued,
                       reserved_key(self.prefix, key.name, budget.unit) if budget else rate_key)
        args = Args.of(1 if self.ban.after_failures else 0, *_rate(self.per_ip), *_rate(key.rate),
                       budget.tokens if budget else 0, bucket_seconds(budget.window) if budget else 0,
                       key.max_concurrent or 0, host_limit or 0, self.max_total or 0,
                       self.lease_ttl_ms, self.queued_ttl_ms)
        # Counted from the parts as a call joins them (any address, mode and lease count the same).
        all_keys = _address_block(self.prefix, "", False) + keys
        count = script_tail(all_keys, _MODES[0] + one(b"") + args + one(b"0"))[0]   # (+ need, last)
        return count, bulk(b"%d" % all_keys.count), keys.data, args.data

    def move(self, lease: bytes, old: str, new: str,
             new_limit: int | None) -> tuple[tuple[bytes, ...], tuple[bytes | int, ...]]:
        """MOVE's keys and arguments: `lease` leaves host `old` for host `new`."""
        host_slots = self.prefix + b"slots:host:"
        return ((host_slots + old.encode(), host_slots + new.encode(), self.queued),
                (lease, new_limit or 0, self.lease_ttl_ms, self.channel))

    def auth_failed(self, addr: str) -> tuple[int, bytes]:
        count, head, args = self._auth
        return count, head + _address_block(self.prefix, addr, True).data + args

    def take(self, name: str, host: str, budget: Budget | None) -> tuple[tuple[bytes, ...], tuple[int | float, ...]]:
        """TAKE's keys for one candidate, and its budget's arguments (budget, bucket_s)."""
        _, key_slots, host_slots = key_keys(self.prefix, name, host)
        if budget is None:
            return (key_slots, host_slots, key_slots, key_slots), (0, 0)
        return ((key_slots, host_slots, tokens_key(self.prefix, name, budget.unit),
                 reserved_key(self.prefix, name, budget.unit)), (budget.tokens, bucket_seconds(budget.window)))

    def finish(self, name: str, host: str, budget: Budget | None, request: bytes, slot: bool, reserved: int,
               tokens: int) -> tuple[int, bytes]:
        """FINISH's (count, tail) for the request whose ID is `request` (its lease): `slot` when it
        holds one, `reserved` the tokens it reserved (with a `budget`)."""
        blocks = self._finish.get((name, host, budget))
        if blocks is None:
            if len(self._finish) >= _MAX_CACHED:
                self._finish.clear()
            _, key_slots, host_slots = key_keys(self.prefix, name, host)
            keys = Args.of(key_slots, host_slots, self.all_slots,
                           tokens_key(self.prefix, name, budget.unit) if budget else key_slots, self.queued,
                           reserved_key(self.prefix, name, budget.unit) if budget else key_slots)
            args = Args.of(bucket_seconds(budget.window) if budget else 1,
                           int(budget.window * 1050) if budget else 0, self.channel, 2 * self.lease_ttl_ms)
            # As a call joins them: the done:ID key last, then the lease, the tokens and the reservation.
            count = script_tail(keys + one(b""), one(b"") + one(b"0") + one(b"") + args)[0]
            blocks = self._finish[(name, host, budget)] = (count, bulk(b"%d" % (keys.count + 1)) + keys.data,
                                                           args.data)
        count, head, tail = blocks
        member = reservation_member(request, reserved) if budget is not None else b""
        return count, head + bulk(self.prefix + b"done:" + request) + bulk(request if slot else b"") + \
            bulk(b"%d" % tokens) + bulk(member) + tail
