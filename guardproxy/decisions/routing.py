"""Which Ollama host takes a request, and how hosts go in and out of service.  Pure logic: no asyncio.

The engine owns one `Host` per configured upstream and keeps its fields
current (health-check results, /api/tags, /api/ps, generations in flight);
everything here reads them, or moves them from one state to the next, with
the time passed in (`now`, seconds on a monotonic clock), so tests run on a
fake clock and literal snapshots.

`choose` runs once per request, so the data it reads is laid out for it:
model names are canonical when they are stored, the tie-break rotations of
the host list are built once per configuration, and a decision builds no
list, set or tuple.
"""

from __future__ import annotations

import enum
import json
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from .models import _matches, canonical as _canonical, entry_name, tagged

DOWN_AFTER = 3        # failed health checks in a row
UP_AFTER = 2          # good health checks in a row
FIRST_BACKOFF = 1.0   # seconds out after the first failure before a first byte
MAX_BACKOFF = 60.0


# --- model names ----------------------------------------------------------------------

@lru_cache(maxsize=4096)
def _canonical_short(name: str) -> str:
    return tagged(_canonical(name))


def canonical_model(name: str) -> str:
    """The one spelling of a model Ollama would resolve `name` to: `Library/Llama3.2` -> `llama3.2:latest`."""
    if len(name) > 512:  # names come from clients: only short ones go into the cache
        return tagged(_canonical(name))
    return _canonical_short(name)


def model_of(body: bytes | Mapping[str, Any], or_name: bool = False) -> str | None:
    """The model a JSON body (or its top-level object, parsed already) names, read the quick way,
    to choose a host and nothing else.

    Not models.body_model's reading (which matches field names as Go does
    and refuses ambiguous bodies): a wrong guess here costs a host's 404 and
    a failover, never a check.  `or_name`: the older "name" (/api/show).
    """
    if not isinstance(body, bytes):
        doc: Any = body
    else:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None
    if not isinstance(doc, dict):
        return None
    name = doc.get("model")
    if or_name and not name:
        name = doc.get("name")
    return name if isinstance(name, str) and name.strip() else None


# --- one host -------------------------------------------------------------------------

class Failure(enum.Enum):
    """What went wrong with one attempt on one host."""
    REFUSED = "refused"                        # connection refused
    RESET = "reset"                            # connection reset before the response head
    CONNECT_TIMEOUT = "connect_timeout"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"  # no response head in time (a model load can be slow)
    STATUS = "status"                          # a response head; its status is passed beside it
    STARTED = "started"                        # the response had begun to reach the client


_CONNECTION_FAILURES = frozenset({Failure.REFUSED, Failure.RESET, Failure.CONNECT_TIMEOUT})
_BREAKER_STATUSES = frozenset({429, 500, 503})
_FAILOVER_STATUSES = frozenset({429, 503})


def trips_breaker(failure: Failure, status: int = 0) -> bool:
    """Whether this failure counts against the host, health checks notwithstanding.

    A host that fails fast has nothing in flight and would otherwise win
    least-busy every time (olla#144).  A first-byte timeout does not count:
    a cold model load is slow, not broken.
    """
    return failure in _CONNECTION_FAILURES or (failure is Failure.STATUS and status in _BREAKER_STATUSES)


def fail_over(failure: Failure, status: int = 0, *, attempts: int, max_attempts: int,
              listed: bool = False) -> bool:
    """Whether to try another host after `attempts` hosts have failed this request before its first byte.

    `listed`: the failed host's model list held the request's model, so a
    404 for it means the list was stale (not that no host has the model).
    Never after a first-byte timeout (Ollama aborts a model load when the
    client leaves, and a second host would start another) or once the
    response has started.  The caller retries only if `choose` still names
    a host, and only with a request body it can replay.
    """
    if attempts >= max_attempts:
        return False
    if failure in _CONNECTION_FAILURES:
        return True
    if failure is Failure.STATUS:
        return status in _FAILOVER_STATUSES or (status == 404 and listed)
    return False


class Host:
    """One upstream as routing sees it: configuration, the last health snapshot, and counters.

    `models` is the canonical set of what the host serves (its /api/tags,
    narrowed by a configured glob list), or None while its list is unknown;
    `loaded` is what its /api/ps shows.  `in_flight` is kept by the engine.
    """

    __slots__ = ("name", "max_concurrent", "weight", "capacity", "patterns", "models", "loaded",
                 "tags", "ps", "in_flight", "up", "_run", "open_until", "backoff", "tripped_at")

    def __init__(self, name: str, max_concurrent: int = 1, weight: float = 1.0,
                 patterns: tuple[str, ...] | None = None) -> None:
        self.name = name
        self.patterns = patterns
        self.configure(max_concurrent, weight, patterns)
        self.models: frozenset[str] | None = None
        self.loaded: frozenset[str] = frozenset()
        self.tags: tuple[Mapping[str, Any], ...] = ()
        self.ps: tuple[Mapping[str, Any], ...] = ()
        self.in_flight = 0
        # Starts up, so a gate that has just started or reloaded serves at once.
        self.up = True
        self._run = 0               # checks in a row that disagree with `up`
        self.open_until = float("-inf")  # the breaker keeps the host out until then
        self.backoff = 0.0          # the last time out; 0 when the breaker is closed
        self.tripped_at = float("-inf")

    def __repr__(self) -> str:
        return f"Host({self.name!r}, in_flight={self.in_flight}, up={self.up})"

    def configure(self, max_concurrent: int, weight: float, patterns: tuple[str, ...] | None) -> bool:
        """Take (new) settings, keeping the snapshot and counters; True when `patterns` changed.

        A host's list is kept narrowed by its patterns, so after a change it
        is unknown (any allowed model) until the next /api/tags.
        """
        if max_concurrent < 1 or weight <= 0:
            raise ValueError("max_concurrent must be at least 1 and weight above 0")
        self.max_concurrent = max_concurrent
        self.weight = weight
        self.capacity = max_concurrent * weight
        changed = self.patterns != patterns
        self.patterns = patterns
        if changed:
            self.models = None
        return changed

    # The model snapshot.

    def _allowed(self, name: str) -> bool:
        return self.patterns is None or _matches(self.patterns, name)

    def lists(self, model: str) -> bool:
        """Whether the host's list holds `model` (canonical); a host whose list is unknown holds any it allows."""
        if self.models is None:
            return self._allowed(model)
        return model in self.models

    def set_tags(self, entries: Iterable[Mapping[str, Any]]) -> bool:
        """Take the `models` of an /api/tags answer; True when the snapshot changed."""
        kept = tuple(e for e in entries if self._allowed(entry_name(e)))
        models = frozenset(canonical_model(entry_name(e)) for e in kept) | self.loaded
        changed = kept != self.tags or models != self.models
        self.tags, self.models = kept, models
        return changed

    def set_ps(self, entries: Iterable[Mapping[str, Any]]) -> bool:
        """Take the `models` of an /api/ps answer (a loaded model is also a model the host has);
        True when the snapshot changed."""
        kept = tuple(e for e in entries if self._allowed(entry_name(e)))
        loaded = frozenset(canonical_model(entry_name(e)) for e in kept)
        changed = kept != self.ps or loaded != self.loaded
        self.ps, self.loaded = kept, loaded
        if self.models is not None and not loaded <= self.models:
            self.models |= loaded
            changed = True
        return changed

    def forget(self, model: str) -> None:
        """The host answered 404 for `model` (canonical): stop sending it there before the next /api/tags."""
        if self.models is not None:
            self.models -= {model}
        self.loaded -= {model}

    # Health and the breaker.

    def health_check(self, ok: bool, refused: bool = False) -> bool:
        """Count one health check; True when the host has just gone up or down."""
        if refused:
            was_up, self.up, self._run = self.up, False, 0
            return was_up
        if ok == self.up:
            self._run = 0
            return False
        self._run += 1
        if self._run < (DOWN_AFTER if self.up else UP_AFTER):
            return False
        self.up = ok
        self._run = 0
        return True

    def failed(self, failure: Failure, status: int = 0, *, now: float, sent_at: float) -> bool:
        """Count one request that failed before its first byte; True when the breaker has just opened.

        A refused connection also takes the host down at once.  Failures of
        requests sent before the breaker last opened belong to that trip and
        do not open it again, so a burst of 503s costs 1 s, not 1+2+4+... s.
        """
        if failure is Failure.REFUSED:
            self.health_check(False, refused=True)
        if not trips_breaker(failure, status) or sent_at < self.tripped_at:
            return False
        self.backoff = FIRST_BACKOFF if self.backoff == 0 else min(MAX_BACKOFF, self.backoff * 2)
        self.open_until = now + self.backoff
        self.tripped_at = now
        return True

    def succeeded(self, sent_at: float) -> None:
        """A response head came back that is not a failure: close the breaker, reset the back-off.

        Only a request sent after the breaker last opened proves the host
        well: a busy host still answers the requests it queued before.
        """
        if sent_at >= self.tripped_at:
            self.backoff = 0.0
            self.open_until = float("-inf")

    def available(self, now: float) -> bool:
        return self.up and self.open_until <= now


# --- all hosts ------------------------------------------------------------------------

class Hosts:
    """The configured hosts in order, with what `choose` precomputes from that order."""

    __slots__ = ("order", "by_name", "rotations", "alone")

    def __init__(self, hosts: Sequence[Host], *, lone: bool = False) -> None:
        self.order = tuple(hosts)
        self.by_name = {h.name: h for h in self.order}
        if len(self.by_name) != len(self.order):
            raise ValueError("host names must be unique")
        n = len(self.order)
        # `lone`: one host that is never unavailable, as nginx never marks the server of a group of
        # one: with nowhere else to go it is always tried, and its own failure is the answer (a 502).
        # (The single `upstream`; [[upstreams]] keep health and breaker even when there is one.)
        self.alone: Host | None = self.order[0] if lone and n == 1 else None
        # Scanning from a different start on each turn makes the first of
        # equally busy hosts, the one kept, rotate without a list of ties.
        self.rotations = tuple(self.order[i:] + self.order[:i] for i in range(n)) or ((),)

    def up_count(self) -> int:
        """Hosts up by their health checks: what /ready reports."""
        return sum(1 for h in self.order if h.up)


_NOT_TRIED: frozenset[str] = frozenset()


class Request:
    """What routing needs to know of one request.  Not changed once made (`after` makes another).

    A plain class: one is made per request, and a frozen dataclass's
    __init__ costs a microsecond more.
    """

    __slots__ = ("model", "target", "admin_route", "generation", "tried")

    def __init__(self, model: str | None = None, target: str | None = None, admin_route: bool = False,
                 generation: bool = True, tried: frozenset[str] = _NOT_TRIED) -> None:
        self.model = None if model is None else canonical_model(model)  # any spelling; stored canonical
        self.target = target            # X-Guardproxy-Upstream, passed on for admin keys only
        self.admin_route = admin_route  # pull, push, create, delete, copy, blobs
        self.generation = generation    # takes one of a host's max_concurrent slots
        self.tried = tried              # hosts this request has failed on

    def __repr__(self) -> str:
        return f"Request(model={self.model!r}, target={self.target!r}, tried={sorted(self.tried)})"

    def after(self, host: Host) -> Request:
        """The same request, to be retried anywhere but `host`."""
        return Request(self.model, self.target, self.admin_route, self.generation, self.tried | {host.name})


class Verdict(enum.Enum):
    WAIT = "wait"                  # every suitable host is full: queue, and choose again when one frees up
    UNAVAILABLE = "unavailable"    # no host can take it now (down, breaker open, or already tried)
    NO_SUCH_HOST = "no_such_host"  # the target names no configured host: a client error


def choose(hosts: Hosts, req: Request, now: float, turn: int) -> Host | Verdict:
    """The host for `req`, or why there is none.  `turn` is a counter the caller advances per call.

    Order: an explicit target; for an admin route, the first host that can
    take it; for a request without a model, the least busy available host.
    For a model: among available hosts whose list holds it, spare capacity
    and the model loaded, then spare capacity, then loaded but full; least
    busy (in flight / (max_concurrent x weight)) within a group.  No host
    holds it at all: one available host, whose own 404 the client then reads.

    max_concurrent is a cap for a generation: when every available host
    that holds the model is at it, warm or not, the answer is WAIT (the
    request queues until one frees).  A request that takes no slot (/api/show,
    say) never waits: for it, loaded but full comes third and cold and full
    fourth.

    A lone host (Hosts.alone) is never unavailable: down or behind its breaker, it is still the
    host, and it is full only for a generation at its max_concurrent.
    """
    tried = req.tried
    alone = hosts.alone
    if alone is not None:
        if req.target is not None and req.target != alone.name:
            return Verdict.NO_SUCH_HOST
        if tried and alone.name in tried:
            return Verdict.UNAVAILABLE
        return Verdict.WAIT if req.generation and alone.in_flight >= alone.max_concurrent else alone
    if req.target is not None:
        # Explicit means explicit: health and breaker do not overrule an admin.
        host = hosts.by_name.get(req.target)
        if host is None:
            return Verdict.NO_SUCH_HOST
        return Verdict.UNAVAILABLE if host.name in tried else host
    if req.admin_route:
        for host in hosts.order:
            if host.available(now) and host.name not in tried:
                return host
        return Verdict.UNAVAILABLE
    rotation = hosts.rotations[turn % len(hosts.rotations)]
    m = req.model
    if m is None:
        return _least_busy(rotation, tried, now)
    best: Host | None = None
    best_group = 4
    best_load = 0.0
    listed = full = False
    capped = req.generation
    for h in rotation:
        if not h.lists(m):
            continue
        listed = True
        if not h.up or h.open_until > now or (tried and h.name in tried):  # Host.available, inlined
            continue
        n = h.in_flight
        if n < h.max_concurrent:
            group = 0 if m in h.loaded else 1
        elif capped:
            full = True
            continue
        else:
            group = 2 if m in h.loaded else 3
        load = n / h.capacity
        if best is None or group < best_group or (group == best_group and load < best_load):
            best, best_group, best_load = h, group, load
    if best is not None:
        return best
    if full:
        return Verdict.WAIT
    if listed:
        return Verdict.UNAVAILABLE
    return _least_busy(rotation, tried, now)


def _least_busy(rotation: tuple[Host, ...], tried: frozenset[str], now: float) -> Host | Verdict:
    best: Host | None = None
    best_load = 0.0
    for h in rotation:
        if not h.up or h.open_until > now or (tried and h.name in tried):  # Host.available, inlined
            continue
        load = h.in_flight / h.capacity
        if best is None or load < best_load:
            best, best_load = h, load
    return Verdict.UNAVAILABLE if best is None else best
