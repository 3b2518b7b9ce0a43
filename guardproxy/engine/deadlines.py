"""The deadlines of one upstream exchange, judged on a clock reading handed in (Watch's sweep, or a test's number).

Until the final response head arrives the limit is the first-byte timeout (a
cold model load can take minutes), after it the gap between body reads.  Body
reads are not timed one by one (a clock call per token): a sweep that finds
the bytes out changed counts as a read, so a read timeout ends a stream never
early and at most one sweep late.  A stalled client is not the upstream's
fault: while the client holds the stream paused the clock restarts, and while
a zero-copy body waits on a full client socket (splice.py) the client's write
deadline applies instead.
"""

from __future__ import annotations

from .failures import ClientGone, FirstByteTimeout, UpstreamTimeout


class Deadlines:
    """The clock of one exchange at a time, started again by each (relay.UpstreamConnection.begin).

    A base of the connection, its five fields among the connection's slots:
    one lives per open stream, and an object of its own would cost each stream
    its header for nothing.  It works on its own as well (the unit tests).
    """

    __slots__ = ("first_byte_timeout", "read_timeout", "client_write_timeout", "last_read", "seen_out")

    def __init__(self) -> None:
        self.start_clock(0.0, 300.0, 600.0, None)

    def start_clock(self, now: float, first_byte: float, read: float, client_write: float | None) -> None:
        """A new exchange: `client_write` is the client's write deadline for a zero-copy body (None: no splice)."""
        self.first_byte_timeout = first_byte
        self.read_timeout = read
        self.client_write_timeout = client_write
        self.last_read = now  # when the upstream was last known to make progress (a body write counts too)
        self.seen_out = 0  # the bytes out the last sweep saw

    def overdue(self, now: float, in_body: bool, bytes_out: int, paused: bool,
                blocked_since: float = 0.0) -> type[FirstByteTimeout | UpstreamTimeout | ClientGone] | None:
        """What ends the exchange at `now`, or None while it is in time.

        `bytes_out`: bytes relayed so far (a change since the last sweep is a read);
        `paused`: the client holds the stream paused; `blocked_since`: when a zero-copy
        body found the client's socket full (0: it is not).
        ClientGone means the client took nothing for its write deadline: both sides end.
        """
        if in_body and bytes_out != self.seen_out:
            self.seen_out = bytes_out
            self.last_read = now
        if blocked_since:
            # Waiting on the client, not the upstream: the client's write deadline applies.
            if self.client_write_timeout is not None and now - blocked_since > self.client_write_timeout:
                return ClientGone
            self.last_read = now
            return None
        if paused:
            self.last_read = now
            return None
        if now - self.last_read >= (self.read_timeout if in_body else self.first_byte_timeout):
            return UpstreamTimeout if in_body else FirstByteTimeout
        return None
