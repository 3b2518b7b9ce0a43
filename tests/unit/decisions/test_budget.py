"""Token budget windows: buckets by wall-clock time, the window sliding a bucket at a time."""

from __future__ import annotations

import pytest

from guardproxy.config.model import Budget
from guardproxy.decisions.budget import BUCKETS, TokenBook, TokenWindow, charged

HOUR = Budget(100, 3600.0, "h")   # buckets of one minute
T0 = 1_800_000_000.0              # a wall-clock second at the start of a minute


def test_total_slides_out_bucket_by_bucket() -> None:
    w = TokenWindow(3600.0)
    assert w.add(T0, 30) == int(T0 // 60)
    w.add(T0 + 600, 50)
    assert w.total(T0 + 3599) == 80
    assert w.total(T0 + 3600) == 50          # the first minute has left the hour
    assert w.total(T0 + 600 + 3600) == 0 and w.buckets == {}


def test_retry_after_is_when_enough_old_buckets_have_left() -> None:
    w = TokenWindow(3600.0)
    w.add(T0, 60)
    w.add(T0 + 600, 30)
    w.add(T0 + 1200, 20)                     # 110 of 100
    assert w.retry_after(T0 + 1800, 100) == pytest.approx(1800)   # 60 leave at T0 + 3600: 50 left
    assert w.retry_after(T0 + 1800, 40) == pytest.approx(2400)    # 30 more must leave too
    assert w.retry_after(T0 + 1800, 200) == 0.0


def test_the_budget_is_checked_before_and_one_request_may_overshoot() -> None:
    book = TokenBook()
    assert book.retry_after("k", HOUR, T0) == 0.0
    book.add("k", HOUR, T0, 99)
    assert book.retry_after("k", HOUR, T0 + 1) == 0.0      # 99 < 100: admitted ...
    book.add("k", HOUR, T0 + 1, 5000)                     # ... and it was a big one
    assert book.used("k", HOUR, T0 + 2) == 5099
    assert book.retry_after("k", HOUR, T0 + 2) == pytest.approx(3598)


def test_another_window_length_is_another_count() -> None:
    book = TokenBook()
    book.add("k", HOUR, T0, 100)
    assert book.used("k", Budget(100, 86400.0, "day"), T0) == 0
    book.load([("k", "day", int(T0 // 1440), 7), ("k", "week", 1, 9)], {"h": 3600.0, "day": 86400.0})
    assert book.used("k", Budget(100, 86400.0, "day"), T0) == 7 and BUCKETS == 60


def test_charged_tokens() -> None:
    assert charged(26, 290, 200, 300, 5000) == 316
    assert charged(None, 17, 200, 300, 5000) == 17      # an embed: only prompt tokens, or a shape with one
    # No final counts: an estimate for a generation that ran (a 499 mid-stream, SSE without usage) ...
    assert charged(None, None, 499, 401, 1001) == 101 + 11
    assert charged(None, None, 200, 4, 100) == 2
    # ... and nothing for one that never did.
    assert charged(None, None, 502, 300, 0) == 0
    assert charged(None, None, 404, 300, 120) == 0
