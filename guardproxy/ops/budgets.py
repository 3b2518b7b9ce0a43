"""Token budgets for `usage`: each key's budget, what its window holds now, and what is left.

Read where the gate keeps them: Redis with [cluster] (on Redis's clock, as the gate decides),
else the state file (next to the config, or in $STATE_DIRECTORY), read-only while the gate writes it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Mapping, cast

from ..config.load import cluster_address
from ..config.model import Config
from ..config.values import BUDGET_WINDOWS
from ..decisions.budget import TokenBook
from ..engine.state.resp import RedisError
from ..engine.state.scripts import tokens_key
from ..engine.state.tokenfile import read_book, state_path
from .columns import table
from .redischeck import RedisDown, connect, why



def budget_table(config: Config, book: TokenBook, now: float) -> str:
    rows = [("key", "budget", "used", "left", "full again in")]
    for k in config.keys:
        if k.tokens is None:
            continue
        used = book.used(k.name, k.tokens, now)
        wait = book.retry_after(k.name, k.tokens, now)
        rows.append((k.name, str(k.tokens), str(used), str(max(0, k.tokens.tokens - used)),
                     _duration(wait) if wait else "-"))
    lines = table(rows[0], rows[1:], 1)
    return "token budgets (prompt + completion tokens over a sliding window):\n" + "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    s = int(seconds + 0.999)
    d, h, m = s // 86400, s // 3600 % 24, s // 60 % 60
    return f"{d}d{h}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def budget_report(config: Config, environ: Mapping[str, str] = os.environ) -> str:
    """The budgets section, or "" when no key has a budget."""
    if not any(k.tokens is not None for k in config.keys):
        return ""
    if config.cluster is not None:
        book, now = asyncio.run(_from_redis(config, environ))
        return budget_table(config, book, now)
    if config.path is None:
        return "token budgets: kept in memory only (no config file to keep them next to)\n"
    now = time.time()
    return budget_table(config, read_book(state_path(config.path, environ), BUDGET_WINDOWS, now), now)


async def _from_redis(config: Config, environ: Mapping[str, str]) -> tuple[TokenBook, float]:
    assert config.cluster is not None
    address = cluster_address(config, environ)
    client = await connect(address)  # RedisDown at the first failed attempt, said in words
    try:
        clock = await client.call(b"TIME")
        if not (isinstance(clock, list) and len(clock) == 2 and all(isinstance(x, bytes) for x in clock)):
            raise RedisError(f"unexpected answer to TIME: {clock!r}")
        now = int(cast(bytes, clock[0])) + int(cast(bytes, clock[1])) / 1e6
        prefix = config.cluster.key_prefix.encode()
        budgets = [(k.name, k.tokens) for k in config.keys if k.tokens is not None]
        replies = await asyncio.gather(*(client.call(b"HGETALL", tokens_key(prefix, name, b.unit))
                                         for name, b in budgets))
        book = TokenBook()
        for (name, b), reply in zip(budgets, replies):
            fields = [x for x in reply if isinstance(x, bytes)] if isinstance(reply, list) else []
            book.load([(name, b.unit, int(f), int(n)) for f, n in zip(fields[0::2], fields[1::2])],
                      {b.unit: b.window})
        return book, now
    except RedisError as e:
        raise RedisDown(why(address, e)) from None
    finally:
        await client.close()
