"""Nothing that may have run is sent again (issue 22): once any byte of a request reached a host,
only a read (listings, show, version) is replayed, on a fresh connection or another host.

The hosts here read a whole request and then drop the connection without a word: what a host does
when it crashes, or restarts, in the middle of running the request.  Before, an admin
POST /api/create on a pooled connection was sent again on a fresh one (the host ran it twice, the
client got a 502 all the same), and with two hosts it ran on both.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import AsyncIterator

import pytest

from conftest import ADMIN_KEY, Proxy, start_proxy
from guardproxy.config.model import Upstream, UpstreamHost
from support.raw_http import fetch
from support.upstreams import RecordingUpstream

OWNER = {"X-API-Key": ADMIN_KEY}
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CREATE = json.dumps({"model": "mine", "from": "llama3.2"}).encode()
GENERATE = json.dumps({"model": "llama3.2", "prompt": "hi"}).encode()


class DropAfterReading:
    """Answers every request with a small 200 on a kept-alive connection, except `drops` of the
    requests whose line starts with `line`: each of those is read whole, then the connection dropped."""

    def __init__(self, line: bytes, drops: int = 1_000_000) -> None:
        self.line = line
        self.drops = drops
        self.seen: list[bytes] = []   # request lines, in order, across connections

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       up: RecordingUpstream) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for field in head.split(b"\r\n")[1:]:
                if field.lower().startswith(b"content-length:"):
                    length = int(field.split(b":", 1)[1])
            await reader.readexactly(length)
            request_line = head.split(b"\r\n", 1)[0]
            self.seen.append(request_line)
            if request_line.startswith(self.line) and self.drops > 0:
                self.drops -= 1
                return   # dropped (RecordingUpstream aborts the connection)
            writer.write(OK)
            await writer.drain()


def count(hosts: list[DropAfterReading], line: bytes) -> int:
    return sum(1 for h in hosts for seen in h.seen if seen.startswith(line))


async def _recording(script: DropAfterReading) -> RecordingUpstream:
    return await RecordingUpstream.start(script)  # type: ignore[arg-type]


@pytest.fixture
async def started() -> AsyncIterator[list[RecordingUpstream]]:
    ups: list[RecordingUpstream] = []
    try:
        yield ups
    finally:
        for up in ups:
            await up.close()


@pytest.mark.parametrize("path, body", [("/api/create", CREATE), ("/api/generate", GENERATE)], ids=["create", "generate"])
async def test_a_request_a_host_read_on_a_pooled_connection_is_not_sent_again(
        path: str, body: bytes, tmp_path: Path, started: list[RecordingUpstream]) -> None:
    host = DropAfterReading(b"POST " + path.encode())
    started.append(up := await _recording(host))
    p = await start_proxy(up.port, tmp_path)
    try:
        assert (await fetch(p.port, "GET", "/api/version", headers=OWNER)).status == 200   # pools the connection
        r = await fetch(p.port, "POST", path, body, OWNER)
        assert r.status == 502
        assert count([host], b"POST " + path.encode()) == 1
        assert up.connections == 1   # not even opened again
    finally:
        await p.server.stop(grace=0)


async def test_a_read_is_sent_again_on_a_fresh_connection(tmp_path: Path, started: list[RecordingUpstream]) -> None:
    host = DropAfterReading(b"GET /api/tags", drops=1)
    started.append(up := await _recording(host))
    p = await start_proxy(up.port, tmp_path)
    try:
        assert (await fetch(p.port, "GET", "/api/version", headers=OWNER)).status == 200
        r = await fetch(p.port, "GET", "/api/tags", headers=OWNER)
        assert r.status == 200 and count([host], b"GET /api/tags") == 2 and up.connections == 2
    finally:
        await p.server.stop(grace=0)


async def two_hosts(hosts: list[DropAfterReading], started: list[RecordingUpstream], tmp_path: Path) -> Proxy:
    """A gate in front of two hosts, a and b, playing `hosts`."""
    for h in hosts:
        started.append(await _recording(h))
    upstreams = tuple(UpstreamHost(name, Upstream("127.0.0.1", up.port), max_concurrent=4)
                      for name, up in zip("ab", started))
    return await start_proxy(started[0].port, tmp_path, upstreams=upstreams)


@pytest.mark.parametrize("path, body", [("/api/create", CREATE), ("/api/generate", GENERATE)], ids=["create", "generate"])
async def test_a_request_a_host_read_is_not_sent_to_another_host(
        path: str, body: bytes, tmp_path: Path, started: list[RecordingUpstream]) -> None:
    hosts = [DropAfterReading(b"POST " + path.encode()) for _ in range(2)]
    p = await two_hosts(hosts, started, tmp_path)
    try:
        r = await fetch(p.port, "POST", path, body, OWNER)
        assert r.status == 502
        assert count(hosts, b"POST " + path.encode()) == 1
        assert sum(up.connections for up in started) == 1
    finally:
        await p.server.stop(grace=0)


async def test_a_read_a_host_dropped_goes_to_another_host(tmp_path: Path, started: list[RecordingUpstream]) -> None:
    hosts = [DropAfterReading(b"GET /api/version") for _ in range(2)]
    hosts[1].drops = 0
    p = await two_hosts(hosts, started, tmp_path)
    try:
        for _ in range(4):   # whichever host routing tries first, the answer is b's
            assert (await fetch(p.port, "GET", "/api/version", headers=OWNER)).status == 200
        assert count(hosts[1:], b"GET /api/version") == 4
    finally:
        await p.server.stop(grace=0)
