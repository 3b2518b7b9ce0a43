"""One contract for both backends of engine/state: in process, and Redis (a real redis-server).

Each test drives a State the way an exchange does (before_auth, auth_failed or after_auth,
admit, finish) and asserts only what a client would see: the status, Retry-After, who gets a
slot and when.  The backends decide at different points of the pipeline, never differently.
"""

from __future__ import annotations

import asyncio
import io
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from conftest import make_config
from guardproxy.config.model import Ban, Budget, Cluster, KeyEntry, Rate, TrafficLimits
from guardproxy.config.values import parse_budget
from guardproxy.decisions.policy import Policies
from guardproxy.engine.failures import ClientGone
from guardproxy.engine.state.backends import open_state
from guardproxy.engine.state.base import NO_TICKET, State, Ticket
from guardproxy.engine.state.cluster import RedisState
from guardproxy.engine.state.local import LocalState
from guardproxy.wire.errors import GuardError
from support.polling import until
from support.redis_server import redis_server

A, B = KeyEntry("a", b"a" * 32), KeyEntry("b", b"b" * 32)
ADDR = "198.51.100.7"


@dataclass
class Outcome:
    status: int = 200
    bytes_in: int = 100
    bytes_out: int = 1000
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def a_state(backend: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[State]:
    """A started state of the backend, closed at the end."""
    if backend == "local":
        config = make_config(1, **overrides)
        state = open_state(config, Policies(config))
        await state.start()
        try:
            yield state
        finally:
            await state.close()
        return
    async with redis_server(tmp_path) as redis:
        config = make_config(1, cluster=Cluster(redis.url(), "t:", lease_ttl=1.0), **overrides)
        shared = open_state(config, Policies(config), log=io.StringIO())
        await shared.start()
        try:
            yield shared
            # Every decision was Redis's: a fallback would pass these tests without it.
            assert (shared.errors, shared.fallbacks) == (0, 0)
        finally:
            await shared.close()


async def attempt(state: State, key: KeyEntry | None, *, generation: bool = False, client: str = ADDR,
                  gone: "asyncio.Future[None] | None" = None, reserve: int = 0) -> tuple[int, Ticket | GuardError]:
    """One request through the hooks, in the exchange's order: (status, ticket or the refusal)."""
    now = time.monotonic()
    try:
        state.before_auth(client, now)
        if key is None:
            await state.auth_failed(client, now)
            return 401, NO_TICKET
        state.after_auth(key, now)
        return 200, await state.admit(key, client, generation, gone, reserve=reserve)
    except GuardError as e:
        return e.status, e


def queued(state: State) -> int:
    """Requests waiting for a slot in this instance's queue."""
    if isinstance(state, LocalState):
        return state.policies.gate.queued
    assert isinstance(state, RedisState)
    return state.slots.queue.queued


def retry_after(refusal: Ticket | GuardError) -> int:
    assert isinstance(refusal, GuardError), refusal
    return int(dict(refusal.headers)["Retry-After"])


def refusal(result: tuple[int, Ticket | GuardError]) -> str:
    assert isinstance(result[1], GuardError), result
    return result[1].message


async def test_per_address_rate_counts_requests_with_and_without_a_key(backend: str, tmp_path: Path) -> None:
    async with a_state(backend, tmp_path, limits=TrafficLimits(per_ip=Rate(3, 60.0))) as s:
        assert [(await attempt(s, k))[0] for k in (A, None, B)] == [200, 401, 200]
        for k in (A, None):
            r = await attempt(s, k)
            assert r[0] == 429 and refusal(r) == "rate limit exceeded" and 19 <= retry_after(r[1]) <= 20
        assert (await attempt(s, A, client="198.51.100.8"))[0] == 200   # another address


async def test_per_key_rate_and_its_refill(backend: str, tmp_path: Path) -> None:
    fast = replace(A, rate=Rate(2, 0.4))
    async with a_state(backend, tmp_path, keys=(fast, B)) as s:
        t0 = time.monotonic()
        assert [(await attempt(s, fast))[0] for _ in range(2)] == [200, 200]
        r = await attempt(s, fast)
        assert r[0] == 429 and refusal(r) == "rate limit exceeded for this key" and retry_after(r[1]) == 1
        assert (await attempt(s, B))[0] == 200
        while (await attempt(s, fast))[0] != 200:   # one request back every 0.2 s
            assert time.monotonic() - t0 < 3.0
            await asyncio.sleep(0.02)
        assert time.monotonic() - t0 >= 0.18   # not before the first one is back


async def test_bans_after_failures_stop_even_the_right_key(backend: str, tmp_path: Path) -> None:
    async with a_state(backend, tmp_path, ban=Ban(after_failures=3, window=60.0, duration=900.0)) as s:
        assert [(await attempt(s, None))[0] for _ in range(3)] == [401, 401, 401]
        for k in (A, None):
            r = await attempt(s, k)
            assert r[0] == 429 and refusal(r).startswith("too many failed authentications")
            assert 899 <= retry_after(r[1]) <= 900
        assert (await attempt(s, A, client="198.51.100.9"))[0] == 200


async def test_per_key_slots_queue_and_hand_over(backend: str, tmp_path: Path) -> None:
    one = replace(A, max_concurrent=1)
    async with a_state(backend, tmp_path, keys=(one, B), limits=TrafficLimits(queue_timeout=5.0)) as s:
        status, first = await attempt(s, one, generation=True)
        assert status == 200 and isinstance(first, Ticket) and first.slot
        assert (await attempt(s, one))[0] == 200            # not a generation: no slot needed
        assert (await attempt(s, B, generation=True))[0] == 200  # another key is not held back
        waiting = asyncio.ensure_future(attempt(s, one, generation=True))
        await until(lambda: queued(s) == 1)
        assert not waiting.done()
        s.finish(first, Outcome())
        status, second = await asyncio.wait_for(waiting, 5)
        assert status == 200 and isinstance(second, Ticket)
        s.finish(second, Outcome())


async def test_queue_timeout_and_a_client_that_hangs_up(backend: str, tmp_path: Path) -> None:
    async with a_state(backend, tmp_path, limits=TrafficLimits(max_concurrent=1, queue_timeout=0.3)) as s:
        _, held = await attempt(s, A, generation=True)
        r = await attempt(s, B, generation=True)
        assert r[0] == 503 and retry_after(r[1]) == 1
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(attempt(s, B, generation=True, gone=gone))
        await until(lambda: queued(s) == 1)
        gone.set_result(None)
        with pytest.raises(ClientGone):
            await asyncio.wait_for(waiting, 5)
        assert queued(s) == 0 and isinstance(held, Ticket)
        s.finish(held, Outcome())
        status, again = await attempt(s, B, generation=True)   # nothing leaked: the one slot is free
        assert status == 200 and isinstance(again, Ticket)
        s.finish(again, Outcome())


def served(s: State, order: list[str], k: KeyEntry) -> "asyncio.Future[None]":
    """A generation of `k` that waits for its slot, notes its key in `order` when granted, and ends at once."""
    async def wait() -> None:
        _, t = await attempt(s, k, generation=True)
        assert isinstance(t, Ticket)
        order.append(k.name)
        s.finish(t, Outcome())
    return asyncio.ensure_future(wait())


async def test_the_queue_is_fair_across_keys(backend: str, tmp_path: Path) -> None:
    keys = tuple(KeyEntry(n, n.encode() * 16) for n in ("busy", "quiet"))
    async with a_state(backend, tmp_path, keys=keys, limits=TrafficLimits(max_concurrent=1)) as s:
        busy, quiet = keys
        _, held = await attempt(s, busy, generation=True)
        order: list[str] = []
        wait = lambda k: served(s, order, k)   # noqa: E731
        tasks = [wait(busy) for _ in range(3)]
        await until(lambda: queued(s) == 3)
        tasks.append(wait(quiet))
        await until(lambda: queued(s) == 4)
        assert isinstance(held, Ticket)
        s.finish(held, Outcome())
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert order[:2] == ["busy", "quiet"]


async def test_the_queue_grants_by_key_weight(backend: str, tmp_path: Path) -> None:
    heavy, light = KeyEntry("heavy", b"h" * 32, weight=4), KeyEntry("light", b"l" * 32)
    async with a_state(backend, tmp_path, keys=(heavy, light), limits=TrafficLimits(max_concurrent=1)) as s:
        _, held = await attempt(s, light, generation=True)
        order: list[str] = []
        tasks = []
        for i in range(10):
            tasks += [served(s, order, heavy), served(s, order, light)]
            await until(lambda: queued(s) == 2 * i + 2)
        assert isinstance(held, Ticket)
        s.finish(held, Outcome())
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert "".join(k[0] for k in order[:10]) == "hhhhlhhhhl"


async def test_token_budget(backend: str, tmp_path: Path) -> None:
    small = replace(A, tokens=parse_budget("100/h"))
    async with a_state(backend, tmp_path, keys=(small, B)) as s:
        _, t = await attempt(s, small, generation=True)
        assert isinstance(t, Ticket) and t.budget == Budget(100, 3600.0, "h")
        s.finish(t, Outcome(prompt_tokens=40, completion_tokens=59))   # 99: still under
        _, t = await attempt(s, small, generation=True)
        assert isinstance(t, Ticket)
        s.finish(t, Outcome(prompt_tokens=10, completion_tokens=500))  # this one overshoots
        deadline = time.monotonic() + 5
        while (r := await attempt(s, small, generation=True))[0] == 200:   # Redis counts after an unawaited call
            assert isinstance(r[1], Ticket)
            s.finish(r[1], Outcome(bytes_out=0))
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert r[0] == 429 and refusal(r) == "token budget exceeded"
        assert 3600 - 60 <= retry_after(r[1]) <= 3600   # the first bucket leaves the hour
        assert (await attempt(s, small))[0] == 200   # not a generation: no tokens to spend
        assert (await attempt(s, B, generation=True))[0] == 200


async def test_reservations_of_running_generations_count_against_the_budget(backend: str, tmp_path: Path) -> None:
    small = replace(A, tokens=parse_budget("100/h"))
    async with a_state(backend, tmp_path, keys=(small, B)) as s:
        _, t = await attempt(s, small, generation=True, reserve=60)
        assert isinstance(t, Ticket) and t.reserved == 60
        r = await attempt(s, small, generation=True, reserve=41)    # 60 + 41 > 100
        assert r[0] == 429 and refusal(r) == "token budget exceeded" and retry_after(r[1]) == 1
        r = await attempt(s, small, generation=True, reserve=101)   # never fits: no Retry-After
        assert r[0] == 429 and isinstance(r[1], GuardError) and "Retry-After" not in dict(r[1].headers)
        _, t2 = await attempt(s, small, generation=True, reserve=40)
        assert isinstance(t2, Ticket)
        s.finish(t, Outcome(status=502, bytes_out=0))              # never ran: its 60 are free again, nothing spent
        s.finish(t2, Outcome(prompt_tokens=10, completion_tokens=20))
        deadline = time.monotonic() + 5
        while (r := await attempt(s, small, generation=True, reserve=70))[0] != 200:   # 30 spent + 70
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert isinstance(r[1], Ticket)
        s.finish(r[1], Outcome(prompt_tokens=10, completion_tokens=0))


async def test_a_waiting_generation_is_decided_again_when_woken(backend: str, tmp_path: Path) -> None:
    one = replace(A, tokens=parse_budget("100/h"), max_concurrent=1)
    async with a_state(backend, tmp_path, keys=(one, B)) as s:
        _, first = await attempt(s, one, generation=True, reserve=30)
        assert isinstance(first, Ticket)
        second = asyncio.ensure_future(attempt(s, one, generation=True, reserve=30))   # 30 + 30 fit: it waits
        await until(lambda: queued(s) == 1)
        s.finish(first, Outcome(prompt_tokens=40, completion_tokens=50))   # 90 spent: 30 more do not fit now
        r = await asyncio.wait_for(second, 5)
        assert r[0] == 429 and refusal(r) == "token budget exceeded"
        assert 3600 - 60 <= retry_after(r[1]) <= 3600
        _, t = await attempt(s, one, generation=True, reserve=10)   # the slot was given back: 90 + 10 fit
        assert isinstance(t, Ticket)
        s.finish(t, Outcome(prompt_tokens=1, completion_tokens=1))


async def test_a_generation_without_final_counts_is_charged_an_estimate(backend: str, tmp_path: Path) -> None:
    small = replace(A, tokens=parse_budget("100/day"))
    async with a_state(backend, tmp_path, keys=(small,)) as s:
        _, t = await attempt(s, small, generation=True)
        assert isinstance(t, Ticket)
        s.finish(t, Outcome(status=499, bytes_in=200, bytes_out=5000))   # 50 + 50: the budget
        deadline = time.monotonic() + 5
        while (r := await attempt(s, small, generation=True))[0] == 200:
            assert isinstance(r[1], Ticket) and time.monotonic() < deadline
            s.finish(r[1], Outcome(status=502, bytes_out=0))
            await asyncio.sleep(0.01)
        assert r[0] == 429
