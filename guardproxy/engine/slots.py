"""Waiting for a generation slot: the asynchronous edge of decisions.limits.ConcurrencyGate.

    async with hold(gate, key, key_limit, queue_timeout):
        ...  # the generation runs; the slot is freed however this block ends

The gate decides (fair order across keys, limits, queue size); this module
only waits for its answer and wakes whoever a freed slot goes to.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Iterable

from ..decisions.limits import ConcurrencyGate, QueueFull
from ..wire.errors import ServiceUnavailable
from .failures import ClientGone


class QueueTimeout(ServiceUnavailable):
    message = "all generation slots are busy; try again later"


async def acquire(gate: ConcurrencyGate, key: str, key_limit: int | None, timeout: float,
                  gone: "asyncio.Future[None] | None" = None) -> None:
    """Wait, in fair order across keys, for a generation slot; 503 after `timeout`.

    `gone` is done when the client hangs up: its place in the queue is given
    up at once (ClientGone), so hung-up clients never crowd out live ones.
    """
    if gate.try_acquire(key, key_limit):
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        gate.enqueue(key, key_limit, waiter)
    except QueueFull:
        raise QueueTimeout("too many requests are waiting for a generation slot",
                           headers=[("Retry-After", "1")]) from None
    try:
        async with asyncio.timeout(timeout):
            if gone is None:
                await waiter
            else:
                await asyncio.wait((waiter, gone), return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    raise ClientGone()
    except BaseException as exc:
        # A timeout, or the task cancelled (shutdown, the connection's task
        # ending): leave the queue.  Cancellation is a BaseException, and a
        # slot that leaks here is lost for good.
        if not gate.cancel(key, waiter):
            # Granted in the same instant it gave up: hand the slot on.
            wake(gate.release(key))
        if not waiter.done():
            waiter.cancel()
        if isinstance(exc, TimeoutError):
            raise QueueTimeout(headers=[("Retry-After", "1")]) from None
        raise


@asynccontextmanager
async def hold(gate: ConcurrencyGate, key: str, key_limit: int | None, timeout: float,
               gone: "asyncio.Future[None] | None" = None) -> AsyncIterator[None]:
    """A generation slot for the duration of the block, released however it ends (cancellation too)."""
    await acquire(gate, key, key_limit, timeout, gone)
    try:
        yield
    finally:
        wake(gate.release(key))


def wake(waiters: Iterable[object]) -> None:
    """Resolve the futures of waiters the gate has just granted a slot."""
    for w in waiters:
        if isinstance(w, asyncio.Future) and not w.done():
            w.set_result(None)
