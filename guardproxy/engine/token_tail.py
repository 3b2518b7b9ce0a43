"""What a generation keeps of its response body for its token counts: the end, and for some shapes the start.

tokens.py reads the counts from these bytes once the response has ended, so
nothing is parsed per token.  Only generations keep anything: every other
exchange has no TokenTail attached (relay.UpstreamConnection._tail is None), so a
bulk response never holds more than the transport's own buffer.  A connection
makes its TokenTail for its first generation and starts it again for each
later one: making an object per generation would cost about as many
instructions as reading a small answer's head.
"""

from __future__ import annotations

from typing import cast

TAIL_READS = 4  # past this many kept reads they are joined, and cut to the budget


class TokenTail:
    """The last few body reads of one generation (`reads`), ending with `budget` bytes of the body
    or more (of a large read only its end), and the body's first `head_room` bytes in `head`.

    (The reads are a plain list held here, not this object itself as a list subclass: that
    saves an object per generation but makes every keep about a fifth slower.)
    """

    __slots__ = ("reads", "budget", "head", "head_room")

    def __init__(self, budget: int = 256, head_room: int = 0) -> None:
        self.reads: list[bytes] = []
        self.start(budget, head_room)

    def start(self, budget: int, head_room: int = 0) -> None:
        """A new body: keep its last `budget` (> 0) bytes, and its first `head_room`."""
        self.reads.clear()
        self.budget = budget
        self.head = b""
        self.head_room = head_room

    def keep(self, data: bytes | memoryview) -> None:
        """Keep the end of the body, whatever the size of the reads (called once per body read)."""
        if self.head_room:  # (the first few KiB of a body: a copy, once)
            piece = data[:self.head_room]
            self.head += piece
            self.head_room -= len(piece)
        budget = self.budget
        kept = self.reads
        if len(data) >= budget:
            # Of a large read only its end is copied, so big buffers are freed
            # (and their pages reused) at once; it replaces every earlier read.
            kept[:] = [bytes(data[-budget:])]  # (bytes of a view: the read's buffer is not pinned)
            return
        # A token read is kept by reference, and only every few reads are they
        # joined and cut to the budget: no sizes summed per read, and at most
        # TAIL_READS small reads (each under the budget) held.
        kept.append(cast(bytes, data))  # (a view is never this small: response._BIG_REST)
        if len(kept) > TAIL_READS:
            kept[:] = [b"".join(kept)[-budget:]]

    def take(self) -> tuple[bytes, bytes]:
        """(the body's start, its end: at most `budget` bytes); then forgets them."""
        tail = b"".join(self.reads)[-self.budget:] if self.reads else b""
        head = self.head
        self.reads.clear()
        self.head = b""
        return head, tail
