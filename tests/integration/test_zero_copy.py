"""Long Content-Length bodies spliced in the kernel (Linux, plain TCP), and the ordinary path beside them."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tracemalloc
from pathlib import Path

import pytest

from conftest import ADMIN_KEY, KEY, start_proxy
from guardproxy.config.model import ServerLimits, Timeouts
from guardproxy.engine.splice import AVAILABLE, Splice
from guardproxy.testing.fake_ollama import FakeOllama
from support.polling import until, until_still
from support.raw_http import exchange, fetch, read_response, request_bytes

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="os.splice exists on Linux only")
ADMIN = {"X-API-Key": ADMIN_KEY}
SIZE = 4 << 20


async def blob(port: int, headers: dict[str, str], size: int = SIZE) -> bytes:
    raw = await exchange(port, request_bytes("GET", f"/fake/blob?size={size}&framing=length",
                                             headers={**headers, "Connection": "close"}), timeout=30)
    return raw.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("zero_copy", [True, False])
async def test_long_bodies_arrive_byte_for_byte_either_way(fake: FakeOllama, tmp_path: Path, zero_copy: bool) -> None:
    p = await start_proxy(fake.port, tmp_path, server=ServerLimits(zero_copy=zero_copy))
    try:
        moved = Splice.moved_total
        via = await blob(p.port, ADMIN)
        assert via == await blob(fake.port, {})
        assert len(via) == SIZE
        spliced = Splice.moved_total - moved
        assert (spliced > SIZE - (512 << 10)) if zero_copy else spliced == 0
        assert p.log_lines()[-1]["bytes_out"] > SIZE
    finally:
        await p.server.stop(grace=0)


async def test_keep_alive_and_the_pool_carry_on_after_a_spliced_body(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        for _ in range(3):
            writer.write(request_bytes("GET", f"/fake/blob?size={SIZE}&framing=length", headers=ADMIN))
            r = await asyncio.wait_for(read_response(reader), 30)
            assert r.status == 200 and len(r.body) == SIZE
            writer.write(request_bytes("GET", "/api/version", headers=ADMIN))
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        assert fake.connections_opened == 1  # one upstream connection served all six
        writer.close()
    finally:
        await p.server.stop(grace=0)


async def test_a_splice_that_cannot_be_set_up_leaves_the_body_to_the_ordinary_path(
        fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os
    p = await start_proxy(fake.port, tmp_path)
    dups: list[int] = []
    closed: list[int] = []
    real_dup, real_close = os.dup, os.close

    def dup(fd: int) -> int:
        dups.append(real_dup(fd))
        return dups[-1]

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    def pipe2(flags: int) -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    try:
        expected = await blob(fake.port, {})
        moved = Splice.moved_total
        monkeypatch.setattr(os, "dup", dup)
        monkeypatch.setattr(os, "close", close)
        monkeypatch.setattr(os, "pipe2", pipe2)
        via = await blob(p.port, ADMIN)
        monkeypatch.undo()
        assert via == expected  # no descriptor for the pipe: the event loop carries the body
        assert Splice.moved_total == moved
        assert dups and set(dups) <= set(closed)  # the descriptors already taken were given back
        assert p.log_lines()[-1]["status"] == 200
    finally:
        monkeypatch.undo()
        await p.server.stop(grace=0)


async def test_a_generation_keeps_its_token_counts(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path)
    try:
        moved = Splice.moved_total
        body = b'{"model":"nomic-embed-text","input":"bulk","fake_size":%d}' % (2 << 20)
        r = await fetch(p.port, "POST", "/api/embed", body, {"X-API-Key": KEY})
        assert r.status == 200 and json.loads(r.body)["prompt_eval_count"] == 26
        assert Splice.moved_total - moved > 1 << 20
        assert p.log_lines()[-1]["prompt_tokens"] == 26  # the tail still came the ordinary way
    finally:
        await p.server.stop(grace=0)


async def test_a_client_that_stops_reading_stalls_the_upstream_then_gets_every_byte(fake: FakeOllama,
                                                                                  tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path)
    total = 64 << 20
    tracemalloc.start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", p.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        writer.write(request_bytes("GET", f"/fake/blob?size={total}&framing=length&chunk=1048576", headers=ADMIN))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        reader._transport.pause_reading()  # type: ignore[attr-defined]
        # The upstream must stop: its progress stands still.
        last = await until_still(lambda: fake.bytes_sent_last_stream)
        assert last < total // 2, "nothing pushed back on the upstream"
        reader._transport.resume_reading()  # type: ignore[attr-defined]
        got = 0
        while got < total:  # read and drop: the test must not hold 64 MiB itself
            got += len(await asyncio.wait_for(reader.read(1 << 20), 30))
        assert got == total
        # What this process allocated at its peak (the gate, the fake and this reader), well below the body.
        peak = tracemalloc.get_traced_memory()[1] - base
        assert peak < 32 << 20, f"{peak >> 20} MiB allocated while the body went through"
        writer.close()
    finally:
        tracemalloc.stop()
        await p.server.stop(grace=0)


async def test_a_client_that_never_reads_is_dropped_and_the_upstream_closed(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path, timeouts=Timeouts(write=0.5))
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", p.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
        writer.write(request_bytes("GET", f"/fake/blob?size={64 << 20}&framing=length&chunk=1048576", headers=ADMIN))
        await reader.readuntil(b"\r\n\r\n")
        reader._transport.pause_reading()  # type: ignore[attr-defined]
        await asyncio.wait_for(fake.stream_aborted.wait(), 10)  # the upstream's connection was closed
        await until(lambda: not p.server.connections, timeout=10)
        entry = p.log_lines()[-1]
        assert entry["status"] == 499 and entry["outcome"] == "client_gone"
        writer.close()
    finally:
        await p.server.stop(grace=0)


async def test_a_client_that_hangs_up_mid_body_closes_the_upstream_at_once(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(request_bytes("GET", f"/fake/blob?size={256 << 20}&framing=length&chunk=1048576", headers=ADMIN))
        await reader.readexactly(2 << 20)  # well into the spliced part
        writer.transport.abort()
        await asyncio.wait_for(fake.stream_aborted.wait(), 10)
    finally:
        await p.server.stop(grace=0)


@pytest.mark.skipif(sys.platform != "linux", reason="TLS path check")
async def test_tls_clients_take_the_ordinary_path(fake: FakeOllama, tmp_path: Path) -> None:
    import ssl

    import trustme

    from guardproxy.config.model import Tls
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    p = await start_proxy(fake.port, tmp_path, tls=Tls(tmp_path / "c.pem", tmp_path / "k.pem"))
    try:
        client = ssl.create_default_context()
        ca.configure_trust(client)
        moved = Splice.moved_total
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port, ssl=client, server_hostname="127.0.0.1")
        writer.write(request_bytes("GET", f"/fake/blob?size={SIZE}&framing=length", headers={**ADMIN, "Connection": "close"}))
        r = await asyncio.wait_for(read_response(reader), 30)
        assert r.status == 200 and r.body == await blob(fake.port, {})
        assert Splice.moved_total == moved
        writer.close()
    finally:
        await p.server.stop(grace=0)
