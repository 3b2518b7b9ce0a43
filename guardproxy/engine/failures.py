"""What goes wrong between guardproxy and the upstream, and the one place it becomes a status.

Errors are named where the I/O happens (the pool's connect, the relay's
reads and timers) and are GuardErrors from then on, so the exchange renders
them like any refusal while nothing has reached the client yet (the way
httpcore maps exceptions at its edge and Caddy's statusError picks 502 or
504): refused or unreachable -> 502, a timeout -> 504.  A client that hangs
up is not an error response at all: it is logged as 499.
"""

from __future__ import annotations

from ..wire.errors import BadGateway, GatewayTimeout, GuardError


class ClientGone(Exception):
    """The client hung up; logged as 499, nothing is sent."""


class UpstreamGone(BadGateway):
    message = "upstream closed the connection"


class UpstreamTimeout(GatewayTimeout):
    message = "upstream read timeout"


class FirstByteTimeout(GatewayTimeout):
    message = "upstream first byte timeout"


class ConnectFailed(BadGateway):
    """No connection to the upstream (unreachable, DNS): routing counts it against the host."""
    message = "upstream unavailable"


class ConnectRefused(ConnectFailed):
    """Nothing listens there: routing takes the host down at once."""


class ConnectTimeout(GatewayTimeout):
    message = "upstream connect timeout"


def connect_failure(exc: BaseException) -> GuardError:
    """A failed connect: a timeout is 504, anything else (refused, unreachable, DNS) is 502."""
    if isinstance(exc, TimeoutError):
        return ConnectTimeout()
    if isinstance(exc, ConnectionRefusedError):
        return ConnectRefused()
    return ConnectFailed()
