"""The [cluster] Redis as the commands see it: reachable, the password taken, its version, and whether it is
the primary.  One connection attempt, not the gate's reconnecting loop: a command says at once that Redis is
down instead of waiting out a timeout (`usage`), and `doctor` reports what it found.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from ..config.redis_url import RedisAddress
from ..engine.state.resp import RedisClient, RedisError, info_fields

CONNECT_TIMEOUT = 2.0  # seconds: a Redis on the network answers in milliseconds


class RedisDown(Exception):
    """Redis could not be used; the message says why in words (no "config error": the config may be right)."""


@dataclass(frozen=True)
class RedisFacts:
    version: str | None  # redis_version from INFO server
    role: str | None     # "master", "slave", ... from ROLE


def why(address: RedisAddress, error: BaseException | None, timeout: float = CONNECT_TIMEOUT) -> str:
    """One line for an operator: where Redis was looked for and what went wrong."""
    where = f"Redis at {address.url}"
    text = str(error) if error is not None else ""
    if isinstance(error, ConnectionRefusedError) or "refused" in text.lower() or "connect call failed" in text.lower():
        return f"{where}: nothing listens there (connection refused)"
    if isinstance(error, RedisError) and text.startswith(("WRONGPASS", "NOAUTH", "ERR AUTH", "ERR invalid password",
                                                            "ERR Client sent AUTH")):
        return f"{where}: it refused the password ({text.split(' (', 1)[0]})"
    if isinstance(error, TimeoutError) or error is None:
        return f"{where}: no answer within {timeout:g} s"
    if isinstance(error, ssl.SSLError):
        return f"{where}: TLS failed ({getattr(error, 'reason', None) or error})"
    return f"{where}: {text or type(error).__name__}"


def is_auth_problem(message: str) -> bool:
    return "refused the password" in message


def fix_for(message: str, on_redis_error: str) -> str:
    """What to do about a Redis the gate cannot use, as `why` worded it."""
    if is_auth_problem(message):
        return ("put the password Redis expects (its requirepass, or the ACL user's) in $GUARDPROXY_REDIS_URL "
                "or [cluster] redis, as redis://[user]:PASSWORD@host:port")
    if "replica" in message:
        return "point [cluster] redis at the primary (ROLE answers \"master\" there), or name it through Sentinel"
    if "needs Redis" in message or "Cluster node" in message:
        return "use a Redis 7 (or Valkey) primary that is not a Redis Cluster node"
    if "NOPERM" in message:
        return "give the gate's Redis user the ACL docs/hosts-and-redis.md lists"
    return (f"start Redis (`sudo systemctl start redis-server`) or point [cluster] redis at it; until it "
            f"answers, the gates apply on_redis_error = \"{on_redis_error}\"")


async def connect(address: RedisAddress, timeout: float = CONNECT_TIMEOUT) -> RedisClient:
    """A connected client, or RedisDown as soon as the first attempt fails (not after retrying)."""
    failed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def state(up: bool, error: BaseException | None) -> None:
        if not failed.done():
            failed.set_result(None if up else error)

    # (rediss://: the client makes the TLS context the gate uses, [cluster] tls_* files included)
    client = RedisClient(address, timeout=timeout, connect_timeout=timeout, backoff=(timeout, timeout),
                         on_state=state)
    client.start()
    try:
        async with asyncio.timeout(timeout + 0.5):
            error = await failed
    except TimeoutError:
        error = TimeoutError()
    if error is not None or not client.connected:
        await client.close()
        raise RedisDown(why(address, error, timeout))
    return client


async def facts(client: RedisClient) -> RedisFacts:
    """Its version and its role (ROLE's first word)."""
    version = role = None
    try:
        version = info_fields(await client.call(b"INFO", b"server")).get("redis_version")
    except RedisError:
        pass
    try:
        reply = await client.call(b"ROLE")
        if isinstance(reply, list) and reply and isinstance(reply[0], bytes):
            role = reply[0].decode("ascii", "replace")
    except RedisError:
        pass
    return RedisFacts(version, role)


def inspect(address: RedisAddress, timeout: float = CONNECT_TIMEOUT) -> RedisFacts:
    """Connect once and read the facts (blocking; RedisDown when it cannot be used)."""
    async def run() -> RedisFacts:
        client = await connect(address, timeout)
        try:
            return await facts(client)
        finally:
            await client.close()
    return asyncio.run(run())
