"""What a generation keeps for its token counts (engine/token_tail.py), fed reads of every size."""

from __future__ import annotations

import pytest

from guardproxy.engine.token_tail import TAIL_READS, TokenTail

BODY = bytes(range(256)) * 12  # 3072 bytes, every position distinct within 256


@pytest.mark.parametrize("budget", [1, 7, 256, 1000, 5000])
def test_the_end_is_kept_whatever_the_read_sizes(budget: int) -> None:
    for size in (1, 2, 3, 5, 64, 255, 256, 257, 1000, 3072):
        tail = TokenTail(budget)
        for at in range(0, len(BODY), size):
            tail.keep(BODY[at:at + size])
            assert len(tail.reads) <= TAIL_READS  # never more than a few reads held
            kept = sum(map(len, tail.reads))
            assert kept <= max(budget, size) + TAIL_READS * size  # bounded, not the whole body
        head, end = tail.take()
        assert head == b"" and end == BODY[-budget:], (budget, size)


def test_mixed_sizes_and_views() -> None:
    tail = TokenTail(100)
    pieces = [BODY[:3], BODY[3:500], BODY[500:501], BODY[501:530], BODY[530:2000], BODY[2000:2090]]
    for piece in pieces:
        tail.keep(memoryview(piece) if len(piece) >= 100 else piece)
    assert all(type(r) is bytes for r in tail.reads)  # a large view is copied: its buffer is not pinned
    assert tail.take()[1] == BODY[:2090][-100:]


@pytest.mark.parametrize("size", [1, 10, 100, 5000])
def test_the_start_is_kept_up_to_its_room(size: int) -> None:
    tail = TokenTail(64, head_room=300)
    for at in range(0, len(BODY), size):
        tail.keep(BODY[at:at + size])
    head, end = tail.take()
    assert head == BODY[:300] and end == BODY[-64:]
    assert tail.take() == (b"", b"")  # handed over once


def test_a_body_shorter_than_the_budget_is_kept_whole() -> None:
    tail = TokenTail(256, head_room=10)
    for b in (b"ab", b"cd", b"e", b"fgh", b"ij", b"k"):
        tail.keep(b)
    assert tail.take() == (b"abcdefghij", b"abcdefghijk")
