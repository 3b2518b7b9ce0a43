"""Waiting for a state another task or thread brings about: a bounded loop with a deadline."""

from __future__ import annotations

import asyncio
import inspect
from typing import Awaitable, Callable, TypeVar, overload

T = TypeVar("T")


@overload
async def until(cond: Callable[[], Awaitable[T]], timeout: float = 5.0, interval: float = 0.005) -> T: ...
@overload
async def until(cond: Callable[[], T], timeout: float = 5.0, interval: float = 0.005) -> T: ...


async def until(cond: Callable[[], object], timeout: float = 5.0, interval: float = 0.005) -> object:
    """The first truthy value of `cond()`; fails the test when `timeout` seconds pass without one.

    For state that has no event to wait on (a counter in the server, a file
    another thread writes); everything that has an event waits on the event.
    An awaitable result (a request, a Redis command) is awaited, within the same deadline.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await asyncio.wait_for(value, max(deadline - loop.time(), interval))
        if value:
            return value
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(interval)


async def until_still(value: Callable[[], T], samples: int = 20, interval: float = 0.01, timeout: float = 5.0) -> T:
    """`value()` once it has stayed the same over `samples` samples in a row (a stalled transfer's progress)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, still = value(), 0
    while still < samples:
        assert loop.time() < deadline, f"still changing after {timeout} s: {last!r}"
        await asyncio.sleep(interval)
        now = value()
        still, last = (still + 1 if now == last else 0), now
    return last
