"""Token budget windows: buckets by wall-clock time, the window sliding a bucket at a time."""

from __future__ import annotations

import pytest

from guardproxy.config.model import Budget
from guardproxy.decisions import routes
from guardproxy.decisions.budget import BUCKETS, TokenBook, TokenWindow, charged, fit_limit, output_cap, reservation

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


# --- reservations --------------------------------------------------------------------


def test_a_reservation_fits_beside_what_is_spent_and_held() -> None:
    book = TokenBook()
    book.add("k", HOUR, T0, 40)
    assert book.retry_after("k", HOUR, T0, held=20, need=40) == 0.0          # 40 + 20 + 40 = 100
    assert book.retry_after("k", HOUR, T0, held=21, need=40) == pytest.approx(3600)   # the 40 must leave
    assert book.retry_after("other", HOUR, T0, held=61, need=40) == 1.0     # only reservations block: soon
    assert book.retry_after("k", HOUR, T0, held=0, need=61) == pytest.approx(3600)   # the 40 must leave
    assert fit_limit(100, 0, 0) == 100                                       # nothing reserved: under the budget


ROUTES = {r.name: r for r in routes.ROUTES}


@pytest.mark.parametrize("route, body, cap", [
    ("generate", b'{"options":{"num_predict":12}}', 12),
    ("generate", b'{"options":{"num_predict":12,"num_predict":30}}', 30),   # the last one wins
    ("generate", b'{"options":{"num_predict":5},"Options":{"num_predict":50}}', 50),  # merged, as Go does
    ("chat", b'{"OPTIONS":{"num_predict":12}}', 12),                        # a struct field: any case ...
    ("chat", b'{"options":{"Num_Predict":12}}', None),                      # ... options a map: exact names
    ("generate", b'{"options":{"\\u006eum_predict":7}}', 7),              # an escaped name
    ("generate", b'{"options":{"num_predict":-1}}', None),                  # -1: until done
    ("generate", b'{"options":{"num_predict":null}}', None),
    ("generate", b'{"options":{"num_predict":"12"}}', None),
    ("chat_completions", b'{"max_tokens":7}', 7),
    ("chat_completions", b'{"MAX_TOKENS":7}', 7),
    ("chat_completions", b'{"max_tokens":7,"max_completion_tokens":9}', 9),   # of two, the larger
    ("completions", b'{"max_tokens":7.0}', 7),
    ("responses", b'{"max_output_tokens":300}', 300),
    ("messages", b'{"max_tokens":64,"max_tokens":640}', 640),
    ("generate", b'{"options":{"num_predict":1},"OPTIONS":{"num_predict":null}}', None),   # Go may read null
    ("chat_completions", b'{"max_tokens":5,"MAX_TOKENS":500}', 500),   # never less than what Go reads
    ("generate", b'not json {"options":{"num_predict":1}}', None),
    ("embed", b'{"options":{"num_predict":1}}', None),                      # no output cap on this route
])
def test_the_output_cap_a_body_sets(route: str, body: bytes, cap: int | None) -> None:
    assert output_cap(ROUTES[route], body) == cap


def test_a_reservation_is_the_output_cap_plus_the_prompt_estimate() -> None:
    body = b'{"options":{"num_predict":12}}'   # 30 bytes: 8 tokens
    generate = ROUTES["generate"]
    assert reservation(generate, body, len(body), None, 1024) == 12 + 8
    assert reservation(generate, body, len(body), 5, 1024) == 5 + 8       # the key's cap is lower
    assert reservation(generate, b"{}", 2, None, 1024) == 1024 + 1        # [budgets] reserve
    assert reservation(generate, b"{}", 2, 100, 1024) == 100 + 1          # the key's cap
    assert reservation(ROUTES["embed"], b"{}", 2, None, 1024) == 1        # embeddings write no tokens
