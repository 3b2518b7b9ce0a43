"""Waiting for a generation slot: the asynchronous edge of the concurrency decisions.

    await acquire(gate, key, key_limit, queue_timeout, gone)   # the in-process state used alone
    ...                                                        # the generation runs
    wake(gate.release(key))                                    # however it ended

The gate decides (fair order across keys, limits, queue size); this module only waits for its
answer and wakes whoever a freed slot goes to.  `wait_granted` is the wait itself, shared with
the hosts' queue (in process, where a generation waits for its slot and its host together) and
the Redis backend, whose answers arrive from a round trip instead of at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

from ..decisions.concurrency import ConcurrencyGate, QueueFull
from ..wire.errors import ServiceUnavailable
from .failures import ClientGone


class QueueTimeout(ServiceUnavailable):
    message = "all generation slots are busy; try again later"


def queue_full() -> QueueTimeout:
    return QueueTimeout("too many requests are waiting for a generation slot", headers=[("Retry-After", "1")])


async def wait_granted(waiter: "asyncio.Future[Any]", timeout: float, gone: "asyncio.Future[None] | None",
                       give_up: Callable[[], None], timed_out: type[ServiceUnavailable] = QueueTimeout) -> None:
    """Wait until `waiter` is resolved (a slot granted); `timed_out` (a 503) after `timeout`.

    `gone` is done when the client hangs up: its place in the queue is given up at once
    (ClientGone), so hung-up clients never crowd out live ones.  On any way out but a grant,
    `give_up()` leaves the queue, or hands on a slot granted in the same instant.
    """
    try:
        async with asyncio.timeout(timeout):
            if gone is None:
                await waiter
            else:
                await asyncio.wait((waiter, gone), return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    raise ClientGone()
                waiter.result()   # a waiter may be failed instead of granted
    except BaseException as exc:
        # A timeout, or the task cancelled (shutdown, the connection's task
        # ending): leave the queue.  Cancellation is a BaseException, and a
        # slot that leaks here is lost for good.
        give_up()
        if not waiter.done():
            waiter.cancel()
        if isinstance(exc, TimeoutError):
            raise timed_out(headers=[("Retry-After", "1")]) from None
        raise


async def acquire(gate: ConcurrencyGate, key: str, key_limit: int | None, timeout: float,
                  gone: "asyncio.Future[None] | None" = None, weight: float = 1.0) -> bool:
    """Wait, in fair order across keys, for a generation slot of the in-process gate; True when it
    had to wait (anything decided before may have changed meanwhile)."""
    if gate.try_acquire(key, key_limit):
        return False
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        gate.enqueue(key, key_limit, waiter, weight)
    except QueueFull:
        raise queue_full() from None

    def give_up() -> None:
        if not gate.cancel(key, waiter):
            wake(gate.release(key))   # granted in the same instant it gave up: hand the slot on

    await wait_granted(waiter, timeout, gone, give_up)
    return True


def wake(waiters: Iterable[object]) -> None:
    """Resolve the futures of waiters the gate has just granted a slot."""
    for w in waiters:
        if isinstance(w, asyncio.Future) and not w.done():
            w.set_result(None)
