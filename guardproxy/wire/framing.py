"""Where an HTTP/1.1 message body ends, over raw bytes.

The relay forwards bytes unchanged; these trackers only find the end of the
message so that a keep-alive connection can be reused.  They never copy data.
Pure logic: no asyncio, tested with byte literals.
"""

from __future__ import annotations

import re

# A chunk-size line is hex digits plus optional extensions; nginx caps the
# whole line far below this, and a line longer than this is an attack.
MAX_CHUNK_LINE = 4096
MAX_TRAILER_BYTES = 16384
# A request body may be framed wastefully up to these allowances, then its
# framing must stay in proportion to its payload (see ChunkedDecoder).
FRAGMENT_ALLOWANCE = 1024     # chunks
FRAMING_ALLOWANCE = 64 * 1024  # bytes of size lines, CRLFs and extensions


class FramingError(Exception):
    """The peer sent a body whose framing is invalid."""


class Framing:
    """Base: feed(data) returns the offset just past the message end, or -1."""

    done: bool = False

    def feed(self, data: bytes) -> int:  # pragma: no cover - interface
        raise NotImplementedError


class NoBody(Framing):
    done = True

    def feed(self, data: bytes) -> int:
        return 0


class LengthFraming(Framing):
    """Content-Length countdown."""

    __slots__ = ("remaining", "done")

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes) -> int:
        n = len(data)
        if n < self.remaining:
            self.remaining -= n
            return -1
        end = self.remaining
        self.remaining = 0
        self.done = True
        return end


class CloseFraming(Framing):
    """Body ends when the connection closes (HTTP/1.0 style responses)."""

    def feed(self, data: bytes) -> int:
        return -1


_SIZE, _DATA, _DATA_CRLF, _TRAILER = range(4)
_HEX = frozenset(b"0123456789abcdefABCDEF")


class ChunkedFraming(Framing):
    """Scans chunk-size lines, skips chunk data, and finds the final CRLF.

    A size line, the CRLF after data, or a trailer can each be split across
    reads, so the state survives between feed() calls.  Per read of a token
    stream this is one find() and one int() for each chunk in the read.
    """

    __slots__ = ("state", "remaining", "line", "done")

    def __init__(self) -> None:
        self.state = _SIZE
        self.remaining = 0
        self.line = b""  # partial size line or trailer line
        self.done = False

    def feed(self, data: bytes) -> int:
        pos = 0
        n = len(data)
        while pos < n:
            state = self.state
            if state == _SIZE and not self.line:
                # The token path: a whole chunk (size line, data, CRLF) in this read.
                m = _BARE_SIZE.match(data, pos)
                if m is not None:
                    end = m.end() + int(m.group(1), 16)
                    if end > m.end() and end + 2 <= n and data[end] == 13 and data[end + 1] == 10:
                        pos = end + 2
                        continue
            if state == _DATA:
                take = n - pos
                if take < self.remaining:
                    self.remaining -= take
                    return -1
                pos += self.remaining
                self.remaining = 2
                self.state = _DATA_CRLF
            elif state == _DATA_CRLF:
                # Exactly CRLF must follow chunk data.
                while self.remaining and pos < n:
                    expected = 13 if self.remaining == 2 else 10
                    if data[pos] != expected:
                        raise FramingError("missing CRLF after chunk data")
                    pos += 1
                    self.remaining -= 1
                if not self.remaining:
                    self.state = _SIZE
            elif state == _SIZE:
                line, pos = self._line(data, pos, MAX_CHUNK_LINE)
                if line is None:
                    return -1
                size = _parse_size(line)
                if size:
                    self.remaining = size
                    self.state = _DATA
                else:
                    self.state = _TRAILER
            else:  # _TRAILER: lines until an empty one
                line, pos = self._line(data, pos, MAX_TRAILER_BYTES)
                if line is None:
                    return -1
                if line == b"\r":
                    self.done = True
                    return pos
                if not line.endswith(b"\r"):
                    raise FramingError("bare LF in trailer")
        return -1

    def _line(self, data: bytes, pos: int, limit: int) -> tuple[bytes | None, int]:
        """The next line (without its LF), joined with a part from earlier reads."""
        nl = data.find(b"\n", pos)
        if nl < 0:
            self.line += data[pos:]
            if len(self.line) > limit:
                raise FramingError("chunk size line or trailer too long")
            return None, len(data)
        line = self.line + data[pos:nl] if self.line else data[pos:nl]
        self.line = b""
        return line, nl + 1


def _parse_size(line: bytes) -> int:
    if not line.endswith(b"\r"):
        raise FramingError("chunk size line must end with CRLF")
    digits = line[:-1].split(b";", 1)[0]
    if not digits or len(digits) > 16 or not _HEX.issuperset(digits):
        raise FramingError("invalid chunk size")
    return int(digits, 16)


# --- request bodies: decoded and re-framed, never copied -------------------------

# A chunk extension (RFC 9112 7.1.1) may hold tokens, quoted strings and
# whitespace, never a control byte: a lone CR in one is how llhttp and a
# lenient parser were made to disagree about where a chunk starts.
_EXT_BAD = frozenset(range(0x00, 0x09)) | frozenset(range(0x0A, 0x20)) | {0x7F}


class ChunkedDecoder:
    """Decodes a chunked request body strictly, so guardproxy can re-frame it.

    feed(data) returns (payload pieces, end): end is the offset just past the
    final CRLF, or -1 when more is needed.  Chunk extensions and trailers are
    checked and then dropped; they never reach the upstream.  The running
    payload total is checked against max_body before a chunk's data is read.

    The cost per wire byte stays small whatever the chunking: one feed()
    decodes every chunk in its data with find() and slices, and a body framed
    to burn CPU (more chunk-size lines than 400 per KiB of payload, or more
    framing bytes than payload) is refused once it passes a small allowance.
    """

    __slots__ = ("state", "remaining", "line", "done", "total", "max_body", "chunks", "overhead")

    def __init__(self, max_body: int) -> None:
        self.state = _SIZE
        self.remaining = 0
        self.line = b""
        self.done = False
        self.total = 0      # payload bytes
        self.max_body = max_body
        self.chunks = 0
        self.overhead = 0   # framing bytes: size lines, CRLFs, trailers

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        out = bytearray()
        pos = 0
        n = len(data)
        view = memoryview(data)
        state = self.state
        remaining = self.remaining
        try:
            while pos < n:
                if state == _DATA:
                    take = remaining if remaining < n - pos else n - pos
                    out += view[pos:pos + take]
                    pos += take
                    remaining -= take
                    if not remaining:
                        remaining = 2
                        state = _DATA_CRLF
                elif state == _DATA_CRLF:
                    # Exactly CRLF must follow chunk data; the fast case has both here.
                    if remaining == 2 and n - pos >= 2:
                        if data[pos] != 13 or data[pos + 1] != 10:
                            raise FramingError("missing CRLF after chunk data")
                        pos += 2
                        remaining = 0
                    else:
                        if data[pos] != (13 if remaining == 2 else 10):
                            raise FramingError("missing CRLF after chunk data")
                        pos += 1
                        remaining -= 1
                    if not remaining:
                        state = _SIZE
                else:
                    if state == _SIZE and not self.line:
                        # Fast path: a bare size line, its data and CRLF all in this read.
                        m = _BARE_SIZE.match(data, pos)
                        if m is not None:
                            size = int(m.group(1), 16)
                            start = m.end()
                            if size and start + size + 2 <= n and data[start + size] == 13 \
                                    and data[start + size + 1] == 10:
                                self.total += size
                                self.chunks += 1
                                self.overhead += start - pos + 2
                                if self.total > self.max_body or self.chunks > FRAGMENT_ALLOWANCE \
                                        or self.overhead > FRAMING_ALLOWANCE:
                                    self._check_proportions()
                                out += view[start:start + size]
                                pos = start + size + 2
                                continue
                    nl = data.find(b"\n", pos)
                    limit = MAX_CHUNK_LINE if state == _SIZE else MAX_TRAILER_BYTES
                    if nl < 0:
                        self.line += data[pos:]
                        if len(self.line) > limit:
                            raise FramingError("chunk size line too long" if state == _SIZE
                                               else "trailer section too long")
                        break
                    line = self.line + data[pos:nl] if self.line else data[pos:nl]
                    self.line = b""
                    pos = nl + 1
                    if not line.endswith(b"\r") or b"\r" in line[:-1]:
                        raise FramingError("bare CR or LF in chunked framing")
                    if state == _SIZE:
                        size = _strict_size(line[:-1])
                        self._count_chunk(size, len(line) + 3)  # the size line and the CRLF after the data
                        if size:
                            remaining = size
                            state = _DATA
                        else:
                            remaining = 0  # now counts trailer bytes
                            state = _TRAILER
                    elif line == b"\r":
                        self.done = True
                        self.state, self.remaining = state, remaining
                        return ([bytes(out)] if out else []), pos
                    else:
                        # Trailer fields are dropped, but they must be sane and
                        # the whole section stays within its limit.
                        if _EXT_BAD.intersection(line[:-1]) or b":" not in line or line[:1] in (b" ", b"\t"):
                            raise FramingError("malformed trailer field")
                        remaining += len(line) + 1
                        if remaining > MAX_TRAILER_BYTES:
                            raise FramingError("trailer section too long")
        finally:
            view.release()
        self.state, self.remaining = state, remaining
        return ([bytes(out)] if out else []), -1

    def _count_chunk(self, size: int, framing: int) -> None:
        self.total += size
        self.chunks += 1
        self.overhead += framing
        self._check_proportions()

    def _check_proportions(self) -> None:
        if self.total > self.max_body:
            raise BodyTooLarge()
        if self.chunks > FRAGMENT_ALLOWANCE and self.chunks * 1024 > 400 * self.total:
            raise FramingError("chunked body split into too many tiny chunks")
        if self.overhead > FRAMING_ALLOWANCE + self.total:
            raise FramingError("chunked body framing larger than its payload")


class BodyTooLarge(FramingError):
    """The body passed the configured maximum."""


_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )   (RFC 9112 7.1.1)
_CHUNK_EXT = re.compile(rb"(?:[ \t]*;[ \t]*" + _TCHAR + rb"+(?:[ \t]*=[ \t]*(?:" + _TCHAR + rb"+|" + _QUOTED
                        + rb"))?)*")
_SIZE_RE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_BARE_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")


def _strict_size(line: bytes) -> int:
    m = _SIZE_RE.match(line)
    if m is None:
        raise FramingError("invalid chunk size")
    if m.end() < len(line):
        if line[m.end():m.end() + 1] in b"0123456789abcdefABCDEF":
            raise FramingError("chunk size too large")
        if not _CHUNK_EXT.fullmatch(line, m.end()):
            raise FramingError("malformed chunk extension")
    return int(m.group(), 16)


def dechunk(raw: bytes, limit: int) -> bytes:
    """The payload of a complete chunked body; ValueError if it is malformed, cut short or too big."""
    decoder = ChunkedDecoder(limit)
    try:
        pieces, _ = decoder.feed(raw)
    except FramingError as e:
        raise ValueError(str(e)) from None
    if not decoder.done:
        raise ValueError("chunked body cut short")
    return b"".join(pieces)
