"""Body framing over raw bytes: every split point must give the same answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardproxy.wire.framing import BodyTooLarge, ChunkedDecoder, ChunkedFraming, FramingError, LengthFraming

BODY = (b"4a\r\n" + b"x" * 0x4a + b"\r\n"
        b"5;ext=1\r\nhello\r\n"
        b"0\r\nX-Trailer: 1\r\n\r\n")


def feed_split(data: bytes, cuts: list[int]) -> int:
    f = ChunkedFraming()
    start = 0
    for cut in cuts + [len(data)]:
        end = f.feed(data[start:cut])
        if end >= 0:
            return start + end
        start = cut
    return -1


def test_chunked_end_found_whole() -> None:
    assert feed_split(BODY + b"NEXT", []) == len(BODY)


def test_chunked_end_found_at_every_split() -> None:
    for i in range(1, len(BODY)):
        assert feed_split(BODY + b"GET /", [i]) == len(BODY), i


def test_chunked_byte_by_byte() -> None:
    assert feed_split(BODY, list(range(1, len(BODY)))) == len(BODY)


def test_chunked_incomplete_is_not_done() -> None:
    f = ChunkedFraming()
    assert f.feed(BODY[:-1]) == -1 and not f.done


@pytest.mark.parametrize("bad", [
    b"zz\r\n",                 # not hex
    b"5\r\nhelloXX",           # no CRLF after data
    b"5\nhello\r\n",           # bare LF after size
    b"\r\n",                   # empty size
    b"1" * 17 + b"\r\n",       # absurd size
    b"0\r\nX: 1\n\r\n",        # bare LF in trailer
])
def test_chunked_malformed(bad: bytes) -> None:
    with pytest.raises(FramingError):
        ChunkedFraming().feed(bad)


def test_chunked_size_line_too_long() -> None:
    with pytest.raises(FramingError):
        ChunkedFraming().feed(b"1;" + b"a" * 5000)


def test_length_countdown() -> None:
    f = LengthFraming(10)
    assert f.feed(b"12345") == -1
    assert f.feed(b"67890GET") == 5 and f.done
    assert LengthFraming(0).done


def test_dechunk_whole_bodies() -> None:
    from guardproxy.wire.framing import dechunk
    assert dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 100) == b"hello world"
    for bad, limit in [(b"5\r\nhello\r\n", 100),            # cut short
                       (b"5\r\nhello\r\n0\r\n\r\n", 4),       # over the limit
                       (b"5\r\nhelloXX0\r\n\r\n", 100)]:      # malformed
        with pytest.raises(ValueError):
            dechunk(bad, limit)


# --- chunked re-framing -----------------------------------------------------------------------

CHUNKED = b"5;ext=\"q;x\"\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-A: 1\r\nContent-Length: 99\r\n\r\nNEXT"


def decode_split(data: bytes, cuts: list[int], max_body: int = 1 << 20) -> tuple[bytes, int]:
    dec = ChunkedDecoder(max_body)
    out, consumed, prev = b"", 0, 0
    for cut in sorted(set(cuts)) + [len(data)]:
        piece = data[prev:cut]
        prev = cut
        if not piece:
            continue
        pieces, end = dec.feed(piece)
        out += b"".join(pieces)
        if end >= 0:
            return out, consumed + end
        consumed += len(piece)
    return out, -1


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=12))
def test_chunked_decoder_any_split(cuts: list[int]) -> None:
    assert decode_split(CHUNKED, cuts) == (b"hello world", len(CHUNKED) - 4)


def test_chunked_decoder_limit_from_size_line() -> None:
    dec = ChunkedDecoder(10)
    dec.feed(b"5\r\nhello\r\n")
    with pytest.raises(BodyTooLarge):
        dec.feed(b"6\r\n")


@pytest.mark.parametrize("bad", [b"5;a=\rb\r\nhello\r\n0\r\n\r\n", b"2;\r\naa\r\n0\r\n\r\n", b"0\r\nX:\x01\r\n\r\n",
                                 b"5\r\nhello\n0\r\n\r\n", b"g\r\n"])
def test_chunked_decoder_refuses(bad: bytes) -> None:
    with pytest.raises(FramingError):
        ChunkedDecoder(100).feed(bad)
