"""Several fake Ollama hosts on 127.0.0.2, .3, .4 behind one gate, and streams held open on them."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from guardproxy.config.model import Routing, Upstream, UpstreamHost
from guardproxy.testing.fake_ollama import FakeOllama, RecordedRequest

from .bodies import gen_body
from .raw_http import RawResponse, fetch, read_response, request_bytes

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
NAMES = ("gpu-a", "gpu-b", "gpu-c")
CHECKS = ("/", "/api/ps", "/api/tags")  # what the gate's health checks ask for


class Fakes:
    """Fake hosts started by a test, closed at its end (restarted ones too)."""

    def __init__(self) -> None:
        self.started: list[FakeOllama] = []

    async def start(self, i: int, port: int = 0, **options: Any) -> FakeOllama:
        fake = await FakeOllama.start(ADDRESSES[i], port, **options)
        self.started.append(fake)
        return fake

    async def close(self) -> None:
        for fake in self.started:
            await fake.close()


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    """Start fake hosts with `await fakes.start(i, ...)`; all are closed when the test ends."""
    started = Fakes()
    try:
        yield started
    finally:
        await started.close()


def work(fake: FakeOllama) -> list[RecordedRequest]:
    """What reached a fake besides the health checks."""
    return [r for r in fake.requests if not (r.method == "GET" and r.target in CHECKS)]


def models_asked(fake: FakeOllama) -> list[str]:
    return [r.json()["model"] for r in work(fake) if r.method == "POST" and r.body.startswith(b"{")]


def host(i: int, fake: FakeOllama, max_concurrent: int = 2, **settings: Any) -> UpstreamHost:
    return UpstreamHost(NAMES[i], Upstream(fake.host, fake.port), max_concurrent=max_concurrent, **settings)


@asynccontextmanager
async def gate(tmp_path: Path, hosts: tuple[UpstreamHost, ...], *, interval: float = 0.1,
               **overrides: Any) -> AsyncIterator[Any]:
    """A gate in front of `hosts`, once its first health round has filled the snapshot."""
    from conftest import start_proxy
    overrides.setdefault("routing", Routing(health_interval=interval))
    proxy = await start_proxy(hosts[0].address.port, tmp_path, upstreams=hosts, **overrides)
    try:
        if proxy.server.config.routing.health_interval:
            await asyncio.wait_for(proxy.server.health.next_round(), 5)
        yield proxy
    finally:
        await proxy.server.stop(grace=0)
        proxy.server.access_log.close()


async def generate(port: int, model: str, key: str, **headers: str) -> RawResponse:
    return await fetch(port, "POST", "/api/generate", gen_body(model, stream=False),
                       {"X-API-Key": key, **headers})


class Held:
    """A streamed generation whose head has arrived: it is in flight on its host until closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RawResponse) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, port: int, model: str, key: str, *, tokens: int = 400, delay: float = 0.02) -> "Held":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("POST", "/api/generate", gen_body(model, tokens=tokens, delay=delay, stream=True),
                                   {"X-API-Key": key}))
        head = await asyncio.wait_for(read_response(reader, head_only=True), 5)
        return cls(reader, writer, head)

    async def rest(self) -> bytes:
        """Everything until the gate closes the connection or the chunked body ends."""
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            more = await asyncio.wait_for(self.reader.read(65536), 10)
            if not more:
                break
            data += more
        return data

    def close(self) -> None:
        self.writer.close()
