"""Waiting for a state another task or thread brings about: a bounded loop with a deadline."""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

T = TypeVar("T")


async def until(cond: Callable[[], T], timeout: float = 5.0, interval: float = 0.005) -> T:
    """The first truthy value of `cond()`; fails the test when `timeout` seconds pass without one.

    For state that has no event to wait on (a counter in the server, a file
    another thread writes); everything that has an event waits on the event.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := cond()):
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(interval)
    return value
