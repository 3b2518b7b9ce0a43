"""Where the relay writes a response: the client's transport, or a Collector that keeps it whole."""

from __future__ import annotations

from typing import Callable, Protocol

from ..wire.errors import GuardError
from ..wire.framing import dechunk
from ..wire.heads import ResponseHead


class Failable(Protocol):
    """The exchange a Collector belongs to (relay.UpstreamConnection)."""

    def fail(self, err: BaseException) -> None: ...


class Sink(Protocol):
    """Where a response goes: the client's transport, or a Collector."""

    def write(self, data: bytes) -> None: ...


class Collector:
    """A Sink that keeps a whole (small) response, for the answers guardproxy rewrites.

    Past `limit` bytes the exchange fails with `error`, so an upstream cannot
    make guardproxy buffer without bound.
    """

    __slots__ = ("data", "limit", "error", "_fail", "response")

    def __init__(self, limit: int, error: GuardError) -> None:
        self.data = bytearray()
        self.response: ResponseHead | None = None
        self.limit = limit
        self.error = error
        self._fail: Callable[[BaseException], None] | None = None

    def bind(self, upstream: Failable) -> None:
        """The exchange to fail past the limit (UpstreamConnection.begin binds its sink)."""
        self._fail = upstream.fail

    def write(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > self.limit and self._fail is not None:
            fail, self._fail = self._fail, None
            fail(self.error)

    def body(self, limit: int) -> bytes:
        """The whole response's payload, de-chunked; ValueError if its chunks are malformed or
        over `limit` bytes."""
        rh = self.response
        assert rh is not None
        with memoryview(self.data) as view:
            raw = bytes(view[len(rh.head):])  # (one copy: a bytearray's slice would be a second one)
        return dechunk(raw, limit) if rh.chunked else raw


class Nowhere:
    """The sink of a connection with no exchange attached: bytes then are a protocol error anyway."""

    def write(self, data: bytes) -> None:
        pass


NOWHERE = Nowhere()
