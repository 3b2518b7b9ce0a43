"""Reading one response off an upstream connection: the states it goes through, its head, its framing.

An upstream connection is in one of three states, and moves between them on
four events only, written out as a table the way h11 writes its own
(h11/_state.py): a move that is not in the table is a bug in the relay, and
raises IllegalTransition instead of quietly reading the next response into the
wrong exchange.

    IDLE --begin--> HEAD --head--> BODY --end--> IDLE
                      \\----end------------------^   (an error, or a body-less answer)

The head is read by a HeadReader: it buffers a head split over reads, skips
interim heads (103, a stray 100, 102 Processing), and refuses what a proxy must
not pass on.  The body's end is then found by the framing the head names
(wire/framing.py); feeding it is the relay's token path, so that part stays in
relay.UpstreamConnection.data_received.
"""

from __future__ import annotations

from ..wire.framing import ChunkedFraming, CloseFraming, Framing, LengthFraming, NoBody
from ..wire.heads import BadUpstreamHead, ResponseHead, parse_response_head
from .held import NO_HOLD

MAX_RESPONSE_HEAD = 65536
MAX_INTERIM = 10  # interim heads before a final one (102s: in one read); more is a 502
_BIG_REST = 65536  # body bytes behind a response head from which they are viewed, not copied

# The states (UpstreamConnection.state).  IDLE means "no exchange attached": in the pool, or between
# begin() calls.  (A ClientConnection's `idle` is another thing: waiting for a client's next request head.)
IDLE, HEAD, BODY = 0, 1, 2
STATE_NAMES = ("IDLE", "HEAD", "BODY")

# The events, and the only moves they make.
BEGIN = "begin"  # an exchange is attached: its request is (about to be) sent
FINAL_HEAD = "head"  # the final response head was read
END = "end"  # the exchange is over: its body ended, it failed, or its client left



class IllegalTransition(RuntimeError):
    """An event the state table has no move for: a bug in the relay, never the peer's doing."""

    def __init__(self, state: int, event: str) -> None:
        super().__init__(f"upstream connection: no move for {event!r} in state {STATE_NAMES[state]}")
        self.state = state
        self.event = event


class Moves(dict[str, int]):
    """The moves out of one state: event -> next state; any other event raises IllegalTransition.

    (A dict whose __missing__ raises, so a legal move costs the connection two
    lookups, no call: `self.state = TRANSITIONS[self.state][BEGIN]`.)
    """

    __slots__ = ("state",)

    def __init__(self, state: int, moves: dict[str, int]) -> None:
        super().__init__(moves)
        self.state = state

    def __missing__(self, event: str) -> int:
        raise IllegalTransition(self.state, event)


TRANSITIONS: dict[int, Moves] = {
    IDLE: Moves(IDLE, {BEGIN: HEAD}),
    HEAD: Moves(HEAD, {FINAL_HEAD: BODY, END: IDLE}),
    BODY: Moves(BODY, {END: IDLE}),
}


def next_state(state: int, event: str) -> int:
    """The state `event` moves `state` to; IllegalTransition if the table has no such move."""
    return TRANSITIONS[state][event]


class HeadReader:
    """The response head of one exchange at a time, read from reads of any size.

    One per connection, started again by each exchange (start): making one per
    exchange would cost more than reading a small answer's head does.

    Interim heads are skipped in a loop, never by recursion, and only
    MAX_INTERIM of them per response.  102 Processing says the host is still at
    work and may come again and again, but never more than MAX_INTERIM in one
    read, and it never puts off the first-byte deadline (deadlines.py): a host
    trickling them forever gets its 504.
    """

    __slots__ = ("buf", "interim", "head_request", "client_keep_alive", "extra", "hold")

    def __init__(self) -> None:
        self.start(False, True, b"", NO_HOLD)

    def start(self, head_request: bool, client_keep_alive: bool, extra: bytes, hold: frozenset[int]) -> None:
        self.buf = b""
        self.interim = 0  # interim heads skipped in this exchange (102 Processing aside)
        self.head_request = head_request
        self.client_keep_alive = client_keep_alive
        self.extra = extra  # headers added to the client's copy of the head
        self.hold = hold  # final statuses whose answer is held back (held.py), not the reader's to judge

    def feed(self, data: bytes) -> tuple[ResponseHead, Framing, bytes | memoryview] | None:
        """The final head, the framing it names, and the body bytes behind it in this read;
        None until the head is whole.

        Raises a GuardError (BadUpstreamHead and its kind) for a head no client may get.
        A bulk body's first read (up to 256 KiB behind the head) is viewed, not copied
        (_BIG_REST): only the framings that never search their input get such a view.
        """
        buf = self.buf + data if self.buf else data
        burst = 0
        while True:
            idx = buf.find(b"\r\n\r\n")
            if idx < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    raise BadUpstreamHead("upstream response head too large")
                self.buf = buf
                return None
            self.buf = b""
            if idx + 4 > MAX_RESPONSE_HEAD:
                raise BadUpstreamHead("upstream response head too large")
            rh = parse_response_head(buf[:idx + 4], head_request=self.head_request,
                                     client_keep_alive=self.client_keep_alive, extra=self.extra)
            if rh.status >= 200:
                break
            if rh.status == 101:
                raise BadUpstreamHead("upstream switched protocols")
            burst += 1
            if rh.status != 102:
                self.interim += 1
            if self.interim > MAX_INTERIM or burst > MAX_INTERIM:
                raise BadUpstreamHead("upstream sent too many interim responses")
            buf = buf[idx + 4:]
            if not buf:
                return None
        # What finds the end of the body (written out here, not called: this runs once per response)
        framing: Framing
        if rh.no_body:
            framing = NoBody()
        elif rh.chunked:
            framing = ChunkedFraming()
        elif rh.content_length is not None:
            framing = LengthFraming(rh.content_length)
        else:
            framing = CloseFraming()
        if len(buf) - idx - 4 < _BIG_REST or rh.chunked:  # (the chunked framing searches its input)
            return rh, framing, buf[idx + 4:]
        return rh, framing, memoryview(buf)[idx + 4:]
