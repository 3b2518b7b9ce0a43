"""The state limits keep, behind one interface: in this process (local.py) or shared through Redis (cluster.py).

An exchange calls, in pipeline order (admission.py makes the admission calls):

    state.before_auth(client, now)        no key looked at yet: bans, and what else is known at once
    await state.auth_failed(client, now)  only when the key was refused: count it (may ban)
    state.after_auth(key, now)            the key is known
    ticket = await state.admit(...)       just before forwarding: the rest (rates, budget, a slot),
                                          for a generation with its host's lease when `shares_hosts`
    ticket = state.take(key, reserve)     in one process, for a generation placed on a host with
                                          room: its key's slot and budget reservation at once, or
                                          Full (it waits in the hosts' one queue, and is decided
                                          again, this call included, each time a host has room)
    state.finish(ticket, record)          the request is over: free the slot, count its tokens

The host is always chosen first (hosts.py), then the state decides the rest with it.  The
in-process backend decides rates and bans where it always has (before and after the key), and the
slot and reservation at the moment a host has room; the Redis backend decides everything in the
one round trip of `admit` (and of `auth_failed`), since a round trip per stage would cost one each.
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from typing import Protocol

from ...config.model import Budget, Config, KeyEntry
from ...decisions.concurrency import DEFAULT_HOST


class Outcome(Protocol):
    """What `finish` reads of a finished request (an access-log record has it)."""

    status: int
    bytes_in: int
    bytes_out: int
    prompt_tokens: int | None
    completion_tokens: int | None


class Ticket:
    """What `admit` granted one request, for `finish` to give back."""

    __slots__ = ("key", "host", "slot", "budget", "lease", "reserved", "waited")

    def __init__(self, key: str, host: str = DEFAULT_HOST, slot: bool = False, budget: Budget | None = None,
                 lease: bytes = b"", reserved: int = 0) -> None:
        self.key = key
        self.host = host
        self.slot = slot          # holds a generation slot
        self.budget = budget      # its tokens count against this budget
        self.lease = lease        # its ID in shared state: the slot's lease, the reservation's, the FINISH's
        self.reserved = reserved  # tokens of `budget` reserved until it ends (decisions.budget.reservation)
        self.waited = False       # granted after waiting in a queue: what may have changed is decided again


NO_TICKET = Ticket("")   # nothing to give back (the usual case: no slot, no budget)


class Full(enum.Enum):
    """Why `take` granted no slot: the request waits (the one queue, hosts.py)."""
    KEY = "key"   # its key's max_concurrent is reached: the key's later requests wait too
    ALL = "all"   # [limits] max_concurrent is reached: no generation can start


class State(ABC):
    shares_hosts = False  # a host's max_concurrent is a lease of this state, not counted by hosts.py alone
    # admit() of a request that takes no slot decides nothing: its rates and bans were decided by
    # before_auth/after_auth (in process), so admission need not await it.
    decided_before_admit = False
    errors = 0          # calls to shared state that failed or timed out (none in process)
    fallbacks = 0       # requests decided without shared state (by [cluster] on_redis_error)

    @abstractmethod
    def before_auth(self, client: str, now: float) -> None:
        """Raise Banned or RateLimited before any key is looked at."""

    @abstractmethod
    async def auth_failed(self, client: str, now: float) -> None:
        """The key was refused: count it; raise Banned or RateLimited instead of the 401 when due."""

    @abstractmethod
    def after_auth(self, key: KeyEntry, now: float) -> None:
        """Raise RateLimited for a key over its rate."""

    @abstractmethod
    async def admit(self, key: KeyEntry, client: str, generation: bool, gone: "asyncio.Future[None] | None",
                    host: str = DEFAULT_HOST, host_limit: int | None = None, reserve: int = 0) -> Ticket:
        """Just before forwarding: what is left of the checks, and a slot for a generation.

        Raises a GuardError (429 rates, bans, budget; 503 queue timeout, limits unavailable)
        or ClientGone (hung up while waiting).  `host` is the upstream's name and `host_limit`
        its max_concurrent, given only when `shares_hosts` (else hosts.py counts host slots).
        In one process the gate calls it only for what takes no slot (a generation is `take`n);
        a generation admitted here waits in the state's own queue (the state used alone).
        `reserve`: the tokens a generation reserves of its key's budget (decisions.budget.reservation);
        they are decided, with the slot, at the moment the slot is granted, so a request that
        waited for its slot is decided again when it is woken.
        """

    def take(self, key: KeyEntry, reserve: int) -> Ticket | Full:
        """In one process: the key's slot and its budget reservation for a generation whose host has
        room, decided at once (nothing awaited): a Ticket, or why it must wait.  Raises
        BudgetExceeded.  Called when the request arrives, and again each time it is woken."""
        raise NotImplementedError("this state decides slots in its own admit")

    def check_budget(self, key: KeyEntry, reserve: int) -> None:
        """Raise BudgetExceeded unless `reserve` tokens fit now (a request is refused at once rather
        than after waiting; `take` decides again when it is woken)."""

    def check_ban(self, client: str, now: float) -> None:
        """Raise Banned while the client's address is banned (as far as this instance knows)."""

    async def move(self, ticket: Ticket, host: str, host_limit: int | None) -> bool:
        """A failover: move the host slot `admit` granted to `host`.  True when it is taken there and
        given up where it was; False (nothing changed) when `host` has no room at once.  Called only
        when `shares_hosts` (else hosts.py counts the host slots alone)."""
        raise NotImplementedError("this state holds no host slots")

    @abstractmethod
    def finish(self, ticket: Ticket, outcome: Outcome | None) -> None:
        """The request is over (however it ended): free its slot, release its reservation, count the
        tokens it spent (none when it never ran).  Never waits."""

    @abstractmethod
    def apply(self, config: Config) -> None:
        """Take reloaded settings; counters and slots in use carry over."""

    def waiting(self) -> int:
        """Requests of this instance waiting for a slot now."""
        return 0

    def forget_ban(self, bucket: str | None) -> bool:
        """Drop this instance's copy of a ban (an address bucket, or every one: None); True if it had one."""
        return False

    async def start(self) -> None:
        """Before the first request."""

    async def close(self) -> None:
        """After the last request."""
