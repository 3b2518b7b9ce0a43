"""With shared limits ([cluster], a real redis-server): a generation that waited for its slot is
refused when it is woken if its address was banned meanwhile, instead of running."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import KEY
from guardproxy.config.model import Ban, TrafficLimits
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.gates import gates, keys, open_stream
from support.polling import until
from support.raw_http import fetch
from support.redis_server import RedisServer, redis  # noqa: F401 (redis: a fixture)

LAPTOP = {"X-API-Key": KEY}


async def test_a_waiting_generation_whose_address_was_banned_meanwhile_is_refused_when_woken(
        fake: FakeOllama, tmp_path: Path, redis: RedisServer) -> None:
    async with gates(fake.port, tmp_path, redis.url(), 1, keys=keys(max_concurrent=1),
                     limits=TrafficLimits(queue_timeout=10.0), ban=Ban(after_failures=2, window=60.0,
                                                                        duration=600.0)) as gs:
        g = gs[0]
        _, stream = await open_stream(g.port, LAPTOP, gen_body(tokens=100000, delay=0.01))
        waiting = asyncio.ensure_future(fetch(g.port, "POST", "/api/generate", gen_body(tokens=2), LAPTOP))
        await until(lambda: g.state.slots.queue.queued == 1)
        wrong = {"X-API-Key": "gp_guess-" + "x" * 30}
        assert [(await fetch(g.port, "GET", "/api/tags", headers=wrong)).status for _ in range(2)] == [401, 401]
        forwarded = len(fake.requests)
        stream.transport.abort()   # the slot frees: the waiting generation is woken, and decided again
        r = await asyncio.wait_for(waiting, 10)
        assert r.status == 429 and json.loads(r.body) == {"error": "too many failed authentications; try again later"}
        assert len(fake.requests) == forwarded   # it never ran
        await until(lambda: g.state.occupancy.total == 0)
        assert (g.state.errors, g.state.fallbacks) == (0, 0)
