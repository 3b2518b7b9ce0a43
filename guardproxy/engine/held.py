"""Holding an answer back for failover: a 503, 429 or 404 kept whole instead of reaching the client.

Ollama gives these answers before it runs anything, so another host may take
the request instead (forwarding.relay asks routing).  Until that is decided
the answer must not reach the client, and it must not be large: an upstream
that sends a big "error" body would otherwise be buffered here without bound.
"""

from __future__ import annotations

from .failures import UpstreamGone
from .sinks import Collector, Failable

HELD_LIMIT = 65536  # a held-back error answer (503, 429, 404) larger than this fails the exchange
NO_HOLD: frozenset[int] = frozenset()  # no status is held back (UpstreamConnection.begin's `hold`)


class HeldAnswer(Collector):
    """The whole of a held-back answer; past HELD_LIMIT bytes its exchange fails (UpstreamGone)."""

    __slots__ = ()

    def __init__(self, exchange: Failable) -> None:
        super().__init__(HELD_LIMIT, UpstreamGone("upstream error response too large"))
        self.bind(exchange)
