"""The models the upstream lists: what bounds the `model` label of the metrics.

A key holder may name any model in a request; counting tokens under every
name sent would let one client add series without end.  So a label is a
name the upstream's /api/tags lists, or "other".  The list is fetched
through the pool in the background, once a minute (every few seconds while
the upstream does not answer, which is also what `guardproxy_upstream_up`
reports).  Fetching starts with the first scrape, so a gate nobody measures
sends the upstream nothing of its own (metrics.py keeps the names it counts
until then).

`ListedModels.known()` is all the rest of the engine reads; a set of several
upstreams can answer the same question instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..decisions.models import canonical
from ..wire.errors import BadGateway, GuardError
from ..wire.framing import dechunk
from .failures import UpstreamGone
from .pool import UpstreamPool
from .relay import MAX_RESPONSE_HEAD, Collector

OTHER = "other"
REFRESH = 60.0       # seconds between fetches while the upstream answers
RETRY = 5.0          # ... and while it does not
FETCH_TIMEOUT = 10.0
MAX_LIST = 8 * 1024 * 1024  # a /api/tags answer is a few KiB

log = logging.getLogger("guardproxy")


def listed_name(name: str, known: frozenset[str]) -> str:
    """The label of a model name as a request or response wrote it: the listed name Ollama resolves
    it to ("llama3.2" is "llama3.2:latest"), or OTHER."""
    n = canonical(name)
    if n in known:
        return n
    if ":" not in n.rsplit("/", 1)[-1]:
        n += ":latest"
        if n in known:
            return n
    return OTHER


def names_in(body: bytes) -> frozenset[str]:
    """The canonical model names of an /api/tags answer (ValueError if it is not one)."""
    data: Any = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError("not a model list")
    names = set()
    for m in data["models"]:
        if isinstance(m, dict):
            for field in ("name", "model"):
                if isinstance(m.get(field), str) and m[field]:
                    names.add(canonical(m[field]))
    return frozenset(names)


async def fetch_tags(pool: UpstreamPool, timeout: float = FETCH_TIMEOUT) -> bytes:
    """GET /api/tags through the pool (a stale pooled connection is retried once on a new one)."""
    head = b"GET /api/tags HTTP/1.1\r\nHost: " + pool.authority + b"\r\nAccept: application/json\r\n\r\n"
    for attempt in (0, 1):
        upstream = await pool.acquire(fresh=attempt == 1)
        collector = Collector(MAX_LIST + MAX_RESPONSE_HEAD, BadGateway("upstream model list too large"))
        result = upstream.begin(collector, head_request=False, keep_alive=True, read_timeout=timeout,
                                first_byte_timeout=timeout)
        collector.bind(upstream)
        assert upstream.transport is not None
        upstream.transport.write(head)
        try:
            reusable = await result
        except UpstreamGone:
            if attempt or not upstream.reused:
                raise
            continue
        except BaseException:  # cancelled at shutdown, a timeout: the connection is not reused
            upstream.close()
            raise
        if reusable:
            pool.release(upstream)
        else:
            upstream.close()
        rh = collector.response
        assert rh is not None
        if rh.status != 200:
            raise BadGateway(f"upstream answered {rh.status} to /api/tags")
        raw = bytes(collector.data[len(rh.head):])
        return dechunk(raw, MAX_LIST) if rh.chunked else raw
    raise AssertionError("unreachable")


class ListedModels:
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.models: frozenset[str] | None = None  # None until the upstream has listed its models once
        self.up: bool | None = None  # None until the first fetch has ended
        self._task: asyncio.Task[None] | None = None
        self._fetched: asyncio.Event | None = None

    def known(self) -> frozenset[str] | None:
        """The canonical names the upstream listed last; None before it has answered once."""
        return self.models

    def start(self) -> None:
        self._fetched = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def ready(self, timeout: float = 2.0) -> None:
        """Started, and the first fetch done (or `timeout` passed): a first scrape then has the labels,
        and says whether the upstream is up rather than not yet known."""
        if self._task is None:
            self.start()
        assert self._fetched is not None
        try:
            async with asyncio.timeout(timeout):
                await self._fetched.wait()
        except TimeoutError:
            pass

    async def refresh(self) -> None:
        try:
            self.models = names_in(await fetch_tags(self.pool))
        except (GuardError, ValueError) as e:
            if self.up is not False:
                log.warning("upstream http://%s does not answer GET /api/tags: %s",
                            self.pool.authority.decode(), e)
            self.up = False
        else:
            if self.up is False:
                log.info("upstream http://%s answers again", self.pool.authority.decode())
            self.up = True

    async def _run(self) -> None:
        assert self._fetched is not None
        while True:
            await self.refresh()
            self._fetched.set()
            await asyncio.sleep(REFRESH if self.up else RETRY)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
