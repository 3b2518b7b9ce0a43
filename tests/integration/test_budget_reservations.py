"""Token budgets by reservation: spent <= budget + one request's overrun, whatever the concurrency.

The case that overshot before (issue 22): tokens = "100/day", max_concurrent = 1, requests sent
together.  Each request reserves its output cap (num_predict 20) and its body's bytes / 4 (22):
42 tokens; the fake Ollama reports 26 prompt tokens and the 20 it generated, 46, so each one runs
4 tokens over its reservation.  Two fit (46 + 42 <= 100, then 92 spent); every other one is
refused, also those that waited for the slot and were decided again when woken.  Before, all of
them ran one after another (488 tokens for 8).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest

from conftest import KEY, make_config, start_proxy
from guardproxy.config.model import Budget, Budgets
from guardproxy.config.values import parse_budget
from guardproxy.engine.state.local import LocalState
from guardproxy.engine.state.scripts import FINISH
from guardproxy.testing.fake_ollama import FakeOllama
from guardproxy.testing.fake_ollama.shapes import PROMPT_TOKENS
from support.bodies import gen_body
from support.gates import gates, keys
from support.polling import until
from support.raw_http import fetch
from support.redis_server import RedisServer, redis, redis_server, stalled  # noqa: F401 (redis: a fixture)

Spent = Callable[[], Awaitable[int]]
LAPTOP = {"X-API-Key": KEY}
BUDGET = parse_budget("100/day")
CAP = 20
BODY = gen_body(tokens=CAP, delay=0.002)
RESERVED = CAP + -(-len(BODY) // 4)
SPENT = PROMPT_TOKENS + CAP           # what each request really costs
OVERRUN = SPENT - RESERVED            # one request's error against its own reservation


@asynccontextmanager
async def serving(kind: str, fake: FakeOllama, tmp_path: Path, budget: Budget = BUDGET,
                  **overrides: object) -> AsyncIterator[tuple[list[int], "Tally"]]:
    """Gates of `kind` ("local": one, in process; "redis": one; "two": two sharing Redis), and how
    many tokens the laptop key has spent."""
    laptop = keys(tokens=budget, max_concurrent=1)
    if kind == "local":
        p = await start_proxy(fake.port, tmp_path, keys=laptop, **overrides)
        try:
            state = p.server.state
            assert isinstance(state, LocalState)
            yield [p.port], Tally(lambda: _local(state, budget), lambda: _held_here(state, budget))
        finally:
            await p.server.stop(grace=0)
            p.server.access_log.close()
        return
    async with redis_server(tmp_path) as redis:
        # (a generous op_timeout: every decision must be Redis's, on a loaded machine too)
        async with gates(fake.port, tmp_path, redis.url(), 2 if kind == "two" else 1, keys=laptop,
                         op_timeout=2.0, **overrides) as gs:
            yield [g.port for g in gs], Tally(lambda: _redis(redis, budget), lambda: _held_in(redis, budget))
            assert [(g.state.errors, g.state.fallbacks) for g in gs] == [(0, 0)] * len(gs)


class Tally:
    """The laptop key's tokens spent, and reserved by requests still running (where the gates keep them)."""

    def __init__(self, spent: Spent, held: Spent) -> None:
        self.spent, self.held = spent, held

    async def __call__(self) -> int:
        return await self.spent()


async def _held_here(state: LocalState, budget: Budget) -> int:
    return state.budgets.held.get(("laptop", budget.unit), 0)


async def _held_in(redis: RedisServer, budget: Budget) -> int:
    n = await redis.command("ZCARD", f"t:reserved:{budget.unit}:laptop")
    assert isinstance(n, int)
    return n


async def _local(state: LocalState, budget: Budget) -> int:
    return state.budgets.book.used("laptop", budget, time.time())


async def _redis(redis: RedisServer, budget: Budget) -> int:
    values = await redis.command("HVALS", f"t:tokens:{budget.unit}:laptop")
    assert isinstance(values, list)
    return sum(int(v) for v in values)


async def _generate(port: int, body: bytes = BODY) -> int:
    return (await asyncio.wait_for(fetch(port, "POST", "/api/generate", body, LAPTOP), 30)).status


@pytest.mark.parametrize("kind", ["local", "redis", "two"])
@pytest.mark.parametrize("concurrent", [1, 8, 64])
async def test_spent_stays_within_the_budget_and_one_overrun(kind: str, concurrent: int, fake: FakeOllama,
                                                             tmp_path: Path) -> None:
    async with serving(kind, fake, tmp_path) as (ports, spent):
        if concurrent == 1:
            statuses = [await _generate(ports[i % len(ports)]) for i in range(8)]
        else:
            statuses = list(await asyncio.gather(*(_generate(ports[i % len(ports)]) for i in range(concurrent))))
        ran = statuses.count(200)
        assert ran == 2 and statuses.count(429) == len(statuses) - 2, statuses
        await until(lambda: _equal(spent, ran * SPENT))   # (a FINISH to Redis is not awaited)
        assert ran * SPENT <= BUDGET.tokens + OVERRUN
        # Once the reservations are settled, what is left is too little for one more.
        assert await _generate(ports[0]) == 429


async def _none_held(tally: Tally) -> bool:
    return await tally.held() == 0


async def _equal(spent: Spent, expected: int) -> bool:
    return await spent() == expected


@pytest.mark.parametrize("kind", ["local", "redis"])
async def test_a_request_that_never_ran_releases_its_reservation(kind: str, fake: FakeOllama,
                                                                 tmp_path: Path) -> None:
    """A 502 (nothing upstream ran) costs nothing and gives its reservation back at once."""
    big = Budget(RESERVED, 86400.0, "day")   # room for exactly one reservation
    async with serving(kind, fake, tmp_path, budget=big) as (ports, spent):
        await fake.close()                     # the host is gone: 502, nothing spent
        assert await _generate(ports[0]) == 502
        await until(lambda: _none_held(spent))    # (FINISH to Redis is not awaited)
        assert await _generate(ports[0]) == 502   # (refused with 429 if the first still held its tokens)
        assert await spent() == 0


@pytest.mark.parametrize("kind", ["local", "redis"])
async def test_the_reservation_without_a_cap_in_the_body_is_budgets_reserve(kind: str, fake: FakeOllama,
                                                                           tmp_path: Path) -> None:
    body = b'{"model":"llama3.2","prompt":"hi"}'           # no num_predict: [budgets] reserve (30) + 9
    async with serving(kind, fake, tmp_path, budget=Budget(38, 86400.0, "day"), budgets=Budgets(reserve=30)) \
            as (ports, _):
        assert await _generate(ports[0], body) == 429   # 39 > 38: it can never fit
    (tmp_path / "b").mkdir()
    async with serving(kind, fake, tmp_path / "b", budget=Budget(39, 86400.0, "day"),
                       budgets=Budgets(reserve=30)) as (ports, _):
        assert await _generate(ports[0], body) == 200


def test_the_numbers_of_the_case() -> None:
    assert OVERRUN > 0 and 2 * SPENT <= BUDGET.tokens + OVERRUN < 3 * SPENT   # (what makes the case a case)
    assert SPENT + RESERVED <= BUDGET.tokens < 2 * SPENT + RESERVED
    assert make_config(1).budgets.reserve == 1024


@dataclass
class Outcome:
    status: int = 200
    bytes_in: int = 100
    bytes_out: int = 1000
    prompt_tokens: int | None = PROMPT_TOKENS
    completion_tokens: int | None = CAP


async def _settled(redis: RedisServer) -> tuple[int, int]:
    """(tokens spent, reservations held) of the laptop key in Redis."""
    values = await redis.command("HVALS", "t:tokens:h:laptop")
    held = await redis.command("ZCARD", "t:reserved:h:laptop")
    assert isinstance(values, list) and isinstance(held, int)
    return sum(int(v) for v in values), held


async def test_a_finish_sent_again_is_applied_once(fake: FakeOllama, tmp_path: Path, redis: RedisServer) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 1, keys=keys(tokens=parse_budget("1000/h"))) as (g,):
        key = g.server.config.keys[0]
        ticket = await g.state.admit(key, "198.51.100.7", True, None, reserve=RESERVED)
        assert await _settled(redis) == (0, 1)
        g.state.finish(ticket, Outcome())
        g.state.send_finish(ticket, SPENT, False)   # the same FINISH again, as after a timeout
        await g.state.client.call(b"PING")          # (answered after both, on the same connection)
        assert await _settled(redis) == (SPENT, 0)
        assert await redis.command("PTTL", b"t:done:" + ticket.lease) > 0   # the ID expires


async def test_a_finish_that_timed_out_but_ran_is_not_counted_twice(fake: FakeOllama, tmp_path: Path,
                                                                    redis: RedisServer) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 1, keys=keys(tokens=parse_budget("1000/h"))) as (g,):
        key = g.server.config.keys[0]
        ticket = await g.state.admit(key, "198.51.100.7", True, None, reserve=RESERVED)
        await redis.command("SCRIPT", "LOAD", FINISH.source)   # (else EVALSHA would not run: NOSCRIPT)
        sleeping = asyncio.ensure_future(redis.command("DEBUG", "SLEEP", "0.5", timeout=10))
        await until(lambda: stalled(redis))
        g.state.finish(ticket, Outcome())          # sent; no answer within op_timeout; runs when Redis wakes
        await until(lambda: g.state.unsent)
        await sleeping
        await until(lambda: g.state.connected and not g.state.unsent, timeout=10)   # sent again, same ID
        await g.state.client.call(b"PING")
        assert await _settled(redis) == (SPENT, 0)
        assert g.state.errors >= 1

