"""The in-process backend: one gate, its limits in its own memory, token budgets in a state file.

Rates, bans and the concurrency gate are decisions.policy.Policies, called where the pipeline
has always called them; this module adds the token budgets, and `take`: a generation's slot and
reservation decided at once, at the moment a host has room for it (the queue is the hosts' one,
engine/hosts.py).  `admit` with a generation waits in the gate's own queue: the state used alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from typing import Mapping, TextIO

from ...config.model import Budget, Config, ConfigError, KeyEntry
from ...config.values import BUDGET_WINDOWS
from ...decisions.budget import TokenBook, charged
from ...decisions.concurrency import DEFAULT_HOST
from ...decisions.limits import retry_after_header
from ...decisions.policy import BudgetExceeded, Policies
from .. import slots
from .base import NO_TICKET, Full, Outcome, State, Ticket
from .tokenfile import FLUSH_INTERVAL, TokenFile, state_path


def has_budgets(config: Config) -> bool:
    return any(k.tokens is not None for k in config.keys)


def spent(outcome: Outcome) -> int:
    return charged(outcome.prompt_tokens, outcome.completion_tokens, outcome.status, outcome.bytes_in,
                   outcome.bytes_out)


class Budgets:
    """This process's token windows, kept in the state file (state_path; in memory without a config file)."""

    def __init__(self, config: Config, log: TextIO, environ: Mapping[str, str]) -> None:
        self.book = TokenBook()
        self.held: dict[tuple[str, str], int] = {}   # tokens reserved by running generations, per key and window
        self.wall = time.time     # wall-clock time: windows outlive the process
        self.log = log
        self.path = state_path(config.path, environ) if config.path is not None else None
        self.file: TokenFile | None = None
        self._flush: asyncio.TimerHandle | None = None
        if has_budgets(config):
            self._open(start=True)

    def _open(self, *, start: bool) -> None:
        if self.path is None or self.file is not None:
            return
        try:
            self.file = TokenFile(self.path)
            self.file.load(self.book, BUDGET_WINDOWS, self.wall())
        except (sqlite3.Error, OSError) as e:
            self.file = None
            if start:
                raise ConfigError(f"{self.path}: cannot open the token budget state file: {e}") from None
            print(f"guardproxy: {self.path}: cannot open the token budget state file ({e}); "
                  f"budgets are counted in memory until a restart", file=self.log, flush=True)

    def apply(self, config: Config) -> None:
        if has_budgets(config):
            self._open(start=False)

    def check(self, name: str, budget: Budget, need: int = 0) -> None:
        """Raise BudgetExceeded unless `need` tokens fit beside what is spent and reserved."""
        if need > budget.tokens:
            raise BudgetExceeded()   # never fits: no Retry-After
        wait = self.book.retry_after(name, budget, self.wall(), self.held.get((name, budget.unit), 0), need)
        if wait:
            raise BudgetExceeded(headers=[retry_after_header(wait)])

    def reserve(self, name: str, budget: Budget, need: int) -> None:
        """Check, then hold `need` tokens until `release` (nothing awaits in between: one decision)."""
        self.check(name, budget, need)
        self.held[(name, budget.unit)] = self.held.get((name, budget.unit), 0) + need

    def release(self, name: str, budget: Budget, need: int) -> None:
        left = self.held.get((name, budget.unit), 0) - need
        if left > 0:
            self.held[(name, budget.unit)] = left
        else:
            self.held.pop((name, budget.unit), None)

    def spend(self, name: str, budget: Budget, tokens: int) -> None:
        if tokens <= 0:
            return
        bucket = self.book.add(name, budget, self.wall(), tokens)
        if self.file is not None and self.file.add(name, budget.unit, bucket, tokens):
            try:
                self._flush = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)
            except RuntimeError:   # no loop (a command, a test): write at once
                self.flush()

    def flush(self) -> None:
        self._flush = None
        if self.file is None:
            return
        try:
            self.file.flush(BUDGET_WINDOWS, self.wall())
        except (sqlite3.Error, OSError) as e:
            print(f"guardproxy: {self.path}: token budgets not saved ({e}); retrying",
                  file=self.log, flush=True)
            try:
                self._flush = asyncio.get_running_loop().call_later(FLUSH_INTERVAL * 10, self.flush)
            except RuntimeError:
                pass

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        self.flush()
        if self.file is not None:
            self.file.close()
            self.file = None


class LocalState(State):
    decided_before_admit = True   # (admit returns NO_TICKET for a request that takes no slot)

    def __init__(self, config: Config, policies: Policies, *, log: TextIO = sys.stderr,
                 environ: Mapping[str, str]) -> None:
        self.policies = policies
        self.budgets = Budgets(config, log, environ)

    def before_auth(self, client: str, now: float) -> None:
        self.policies.before_auth(client, now)

    async def auth_failed(self, client: str, now: float) -> None:
        self.policies.auth_failed(client, now)

    def after_auth(self, key: KeyEntry, now: float) -> None:
        self.policies.after_auth(key, now)

    async def admit(self, key: KeyEntry, client: str, generation: bool, gone: "asyncio.Future[None] | None",
                    host: str = DEFAULT_HOST, host_limit: int | None = None, reserve: int = 0) -> Ticket:
        # (`host` comes only when `shares_hosts`: in one process hosts.py counts the host slots.)
        if not generation:
            return NO_TICKET
        pol = self.policies
        got = Full.KEY if key.name in pol.gate.queue else self.take(key, reserve)   # (keep the key's order)
        if isinstance(got, Ticket):
            return got
        # The state used alone: its gate's own fair queue, for the slot.
        self.check_budget(key, reserve)   # (refused at once rather than after queueing)
        await slots.acquire(pol.gate, key.name, key.max_concurrent, pol.queue_timeout, gone, key.weight)
        budget = key.tokens
        if budget is None:
            return Ticket(key.name, slot=True)
        try:
            # Decided again now that the slot is granted: others may have spent meanwhile.
            self.budgets.reserve(key.name, budget, reserve)
        except BudgetExceeded:
            slots.wake(pol.gate.release(key.name))
            raise
        return Ticket(key.name, slot=True, budget=budget, reserved=reserve)

    def take(self, key: KeyEntry, reserve: int) -> Ticket | Full:
        pol, budget = self.policies, key.tokens
        slot = pol.slots_on
        if slot:
            gate = pol.gate
            if not gate.fits(key.name, None, DEFAULT_HOST, None, gate.max_total):
                return Full.ALL
            if not gate.fits(key.name, key.max_concurrent, DEFAULT_HOST, None, None):
                return Full.KEY
        if budget is None:
            if not slot:
                return NO_TICKET
        else:
            self.budgets.reserve(key.name, budget, reserve)   # (raises BudgetExceeded)
        if slot:
            pol.gate.take(key.name)
        return Ticket(key.name, slot=slot, budget=budget, reserved=reserve if budget is not None else 0)

    def check_budget(self, key: KeyEntry, reserve: int) -> None:
        if key.tokens is not None:
            self.budgets.check(key.name, key.tokens, reserve)

    def check_ban(self, client: str, now: float) -> None:
        self.policies.check_ban(client, now)

    def finish(self, ticket: Ticket, outcome: Outcome | None) -> None:
        if ticket.slot:
            slots.wake(self.policies.gate.release(ticket.key))
        if ticket.budget is not None:
            self.budgets.release(ticket.key, ticket.budget, ticket.reserved)
            if outcome is not None:
                self.budgets.spend(ticket.key, ticket.budget, spent(outcome))

    def waiting(self) -> int:
        return self.policies.gate.queued

    def forget_ban(self, bucket: str | None) -> bool:
        return self.policies.bans.lift(bucket)

    def apply(self, config: Config) -> None:
        slots.wake(self.policies.apply(config))
        self.budgets.apply(config)

    async def close(self) -> None:
        self.budgets.close()

