"""The event loop: uvloop where it exists (not Windows), plain asyncio otherwise."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable, Coroutine

LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for asyncio.Runner; raises RuntimeError if uvloop was asked for and is missing."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if sys.platform != "win32":
        try:
            import uvloop  # imported lazily: absent on Windows by design
        except ImportError:
            if name == "uvloop":
                raise RuntimeError("uvloop is not installed; use --loop asyncio") from None
        else:
            return uvloop.new_event_loop
    elif name == "uvloop":
        raise RuntimeError("uvloop does not exist on Windows; use --loop asyncio")
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, int], loop: str = "auto") -> int:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)
