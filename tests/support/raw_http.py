"""Raw HTTP/1.1 on the wire, for tests that must see exact bytes and chunk boundaries."""

from __future__ import annotations

import asyncio
import re


class RawResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = headers
        self.chunks: list[bytes] = []
        self.body = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None


_NEW_ID = re.compile(rb"\r\nX-Request-Id: [0-9a-f]{24}\r\n")


def without_request_id(head: bytes) -> bytes:
    """A head with guardproxy's own new request ID (exactly one) taken out, to compare it byte for byte."""
    out, n = _NEW_ID.subn(b"\r\n", head)
    assert n == 1, head
    return out


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawResponse:
    """Minimal HTTP/1.1 response reader that keeps chunk boundaries."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        if line:
            k, v = line.split(":", 1)
            headers.append((k.strip().lower(), v.strip()))
    resp = RawResponse(status, headers)
    if head_only:
        return resp
    if resp.header("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
            assert data.endswith(b"\r\n")
            if size == 0:
                break
            resp.chunks.append(data[:-2])
        resp.body = b"".join(resp.chunks)
    else:
        resp.body = await reader.readexactly(int(resp.header("content-length") or 0))
    return resp


def request_bytes(method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    hdrs = {"Host": "127.0.0.1"}
    hdrs.update(headers or {})
    if body is not None and "Transfer-Encoding" not in hdrs:
        hdrs["Content-Length"] = str(len(body))
    out = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return out.encode() + (body or b"")


async def read_raw_until_close(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(-1), timeout)


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return every byte received until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_raw_until_close(reader, timeout)
    finally:
        writer.close()


async def fetch(port: int, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> RawResponse:
    """One request on a fresh connection; the parsed response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(method, target, body, headers))
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, head_only=method == "HEAD"), 10)
    finally:
        writer.close()
