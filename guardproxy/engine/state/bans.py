"""Lifting bans: `guardproxy unban ADDRESS|--all`, and removing [ban] on a reload.

A ban lives in two kinds of places: Redis (`{prefix}ban:ADDR`, with the failure count
`{prefix}fail:ADDR`) for gates that share state, and each gate's own memory, where it
remembers every ban it has seen so that a banned address costs no round trip.  Lifting one
deletes the Redis keys and tells the running gates to forget their copy:
  - gates on Redis hear it on the channel `{prefix}unban` (the address, or "*" for all);
  - a gate on this machine reads it from the file next to its config (`NAME.unban`, one
    address or "*" per line, appended), which its config watch polls.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ...decisions.limits import address_bucket
from .resp import RedisClient, RedisReplyError

ALL = "*"
UNBAN_CHANNEL = b"unban"
SCAN_COUNT = 1000


def bucket_of(text: str) -> str:
    """The ban's name for an address as a user writes it: an IPv4 address, an IPv6 address or its /64.
    ValueError for anything else."""
    text = text.strip()
    if "/" in text:
        net = ipaddress.ip_network(text, strict=False)
        if net.version == 6 and net.prefixlen == 64:
            return str(net)
        if net.num_addresses == 1:
            return address_bucket(str(net.network_address))
        raise ValueError(f"{text} is a network; bans are on single IPv4 addresses and IPv6 /64s")
    return address_bucket(str(ipaddress.ip_address(text.strip("[]"))))


def unban_file(config: Path) -> Path:
    """Where `unban` tells the gates of this config to forget a ban: next to the config file."""
    return config.with_name(config.stem + ".unban")


def request_local(config: Path, bucket: str | None) -> Path:
    """Append one request (a bucket, or ALL) for the gates that watch this config's file."""
    path = unban_file(config)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, ((bucket or ALL) + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return path


class UnbanWatch:
    """The requests appended to a config's unban file since this gate started (read by the config watch)."""

    def __init__(self, config: Path) -> None:
        self.path = unban_file(config)
        self.offset = self._size()   # requests from before the start are done already (nothing is banned yet)

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def read(self) -> list[str | None]:
        """New requests: each a bucket, or None for every address."""
        size = self._size()
        if size == self.offset:
            return []
        if size < self.offset:  # replaced or truncated: read it all again
            self.offset = 0
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next look
        self.offset += end
        out: list[str | None] = []
        for line in data[:end].decode("ascii", "replace").splitlines():
            line = line.strip()
            if line == ALL:
                out.append(None)
            elif line:
                out.append(line)
        return out


async def lift_in_redis(client: RedisClient, prefix: bytes, bucket: str | None) -> int:
    """Delete the ban (and the failure count) of `bucket`, or of every address; tell every gate to forget
    its copy.  The number of bans deleted."""
    if bucket is not None:
        b = bucket.encode()
        deleted = await client.call(b"DEL", prefix + b"ban:" + b)
        await client.call(b"DEL", prefix + b"fail:" + b)
        lifted = deleted if isinstance(deleted, int) else 0
    else:
        lifted = 0
        for pattern, counted in ((b"ban:*", True), (b"fail:*", False)):
            cursor = b"0"
            while True:
                reply = await client.call(b"SCAN", cursor, b"MATCH", _glob_escape(prefix) + pattern,
                                          b"COUNT", SCAN_COUNT)
                if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], bytes)
                        and isinstance(reply[1], list)):
                    raise RedisReplyError(f"unexpected answer to SCAN: {reply!r}")
                cursor, keys = reply[0], [k for k in reply[1] if isinstance(k, bytes)]
                if keys:
                    n = await client.call(b"UNLINK", *keys)
                    if counted and isinstance(n, int):
                        lifted += n
                if cursor == b"0":
                    break
    await client.call(b"PUBLISH", prefix + UNBAN_CHANNEL, (bucket or ALL).encode())
    return lifted


def _glob_escape(prefix: bytes) -> bytes:
    out = bytearray()
    for c in prefix:
        if c in b"*?[]\\":
            out += b"\\"
        out.append(c)
    return bytes(out)
