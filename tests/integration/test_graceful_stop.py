"""A graceful stop (SIGTERM, a container's stop) lets running streams finish, however their request arrived."""

from __future__ import annotations

import asyncio
import socket

from conftest import KEY, start_proxy
from guardproxy.testing.fake_ollama import FakeOllama
from support.raw_http import request_bytes

STREAM = b'{"model":"llama3.2","prompt":"hi","fake_delay":0.02,"options":{"num_predict":15}}'


async def test_stop_keeps_a_stream_whose_head_came_with_the_connection(fake: FakeOllama, tmp_path) -> None:
    # The whole request is in the socket before the gate's loop runs again, so the connection's
    # first head is already buffered when its task starts: it was never "idle", and a stop must
    # not close it as an idle keep-alive connection.
    p = await start_proxy(fake.port, tmp_path)
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", p.port))
    try:
        sock.sendall(request_bytes("POST", "/api/generate", STREAM, {"X-API-Key": KEY, "Connection": "close"}))
        sock.setblocking(False)
        got = b""
        async with asyncio.timeout(10):
            while b"tok0" not in got:
                got += await loop.sock_recv(sock, 65536)
        stopping = asyncio.create_task(p.server.stop(grace=10))
        async with asyncio.timeout(5):
            while chunk := await loop.sock_recv(sock, 65536):
                got += chunk
        assert b'"done":true' in got and got.endswith(b"0\r\n\r\n")
        await asyncio.wait_for(stopping, 5)
    finally:
        sock.close()
        p.server.access_log.close()


async def test_stop_closes_idle_connections_at_once(fake: FakeOllama, tmp_path) -> None:
    p = await start_proxy(fake.port, tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    try:
        writer.write(request_bytes("GET", "/api/tags", headers={"X-API-Key": KEY}))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), 5)   # answered; now idle between requests
        # Within 5 s of a 10 s grace: an idle connection is not waited for.
        await asyncio.wait_for(p.server.stop(grace=10), 5)
        assert await asyncio.wait_for(reader.read(-1), 5) == b""
    finally:
        writer.close()
        p.server.access_log.close()
