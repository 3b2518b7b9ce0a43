"""`guardproxy top`'s pure half: literal /metrics texts in, rates and a screen of text out."""

from __future__ import annotations

import pytest

from guardproxy.ops.top import TopError, _frame, metrics_target, render_error
from guardproxy.ops.topview import (NotMetrics, Snapshot, fmt_rate, interval_quantile, parse_metrics, rates,
                                    render, table)
from support.topmetrics import metrics_text

SOURCE = "http://127.0.0.1:11435/metrics"


def snap(n: int, at: float, **kw: bool) -> Snapshot:
    return parse_metrics(metrics_text(n, **kw), at, SOURCE)


def test_a_busy_gate_renders_as_this_screen() -> None:
    screen = render(snap(0, 100.0), snap(2, 102.0, streams_by_model=True, upstream_b_up=False), 80)
    assert screen == """\
guardproxy 0.1.0 http://127.0.0.1:11435/metrics
connections 17  streams 5  queue 4  requests/s 7.00  tokens/s 1520
ttfb p50 500ms p99 4.85s  duration p50 7.50s p99 58.20s  (last 2.0s)

ACTIVE STREAMS
KEY        MODEL              STREAMS
ci-runner  qwen2.5-coder:32b        3
laptop     llama3.2                 2

TOKENS/S
KEY        MODEL              PROMPT  COMPLETION
laptop     llama3.2              120         800
ci-runner  qwen2.5-coder:32b     400         200

REQUESTS
CODE  PER SEC  TOTAL
200      6.00   1609
401      1.00     54
429         0      9
499         0      4

UPSTREAMS
UPSTREAM         STATE  IN FLIGHT
gpu-a.lan:11434     up          3
gpu-b.lan:11434   DOWN          2

REFUSALS
REASON        PER SEC  TOTAL
busy                0      2
rate                0      9
unauthorized     1.00     54
"""


def test_rates_are_the_increase_over_the_seconds_between_scrapes() -> None:
    prev, now = snap(0, 100.0), snap(3, 104.0)  # three intervals' growth in four seconds
    tokens = rates(prev, now, "guardproxy_tokens_total", ["key", "kind"])
    assert tokens is not None
    assert tokens[("laptop", "completion")] == 3 * 800 / 4
    assert tokens[("ci-runner", "prompt")] == 3 * 400 / 4
    assert tokens[("alice", "completion")] == 0
    by_code = rates(prev, now, "guardproxy_requests_total", ["code"])
    assert by_code == {("200",): 3 * 6 / 4, ("401",): 3 / 4, ("429",): 0, ("499",): 0}
    assert rates(None, now, "guardproxy_requests_total", ["code"]) is None
    assert rates(now, now, "guardproxy_requests_total", ["code"]) is None  # no time passed


def test_a_counter_that_went_down_was_reset_and_grew_by_its_new_value() -> None:
    prev = parse_metrics('guardproxy_requests_total{code="200"} 500\n', 10.0)
    now = parse_metrics('guardproxy_requests_total{code="200"} 30\nguardproxy_requests_total{code="502"} 4\n', 12.0)
    assert rates(prev, now, "guardproxy_requests_total", ["code"]) == {("200",): 15.0, ("502",): 2.0}


def test_quantiles_come_from_the_observations_between_two_scrapes() -> None:
    prev, now = snap(0, 0.0), snap(1, 1.0)
    # Six new observations: bucket counts 1 at 0.1, 2 at 0.25, 3 at 0.5, 4 at 1, 5 at 2.5, 6 at 5.
    assert interval_quantile(prev, now, "guardproxy_time_to_first_byte_seconds", 0.5) == 0.5
    assert interval_quantile(prev, now, "guardproxy_time_to_first_byte_seconds", 0.99) == pytest.approx(4.85)
    assert interval_quantile(now, now, "guardproxy_time_to_first_byte_seconds", 0.5) is None
    assert interval_quantile(None, now, "guardproxy_time_to_first_byte_seconds", 0.5) is None
    only_inf = parse_metrics('guardproxy_x_bucket{le="1.0"} 0\nguardproxy_x_bucket{le="+Inf"} 2\n', 1.0)
    assert interval_quantile(Snapshot(0.0), only_inf, "guardproxy_x", 0.5) == 1.0  # as histogram_quantile()


def test_the_first_frame_has_gauges_and_totals_but_no_rates_yet() -> None:
    screen = render(None, snap(0, 100.0), 80)
    assert "requests/s -  tokens/s -" in screen
    assert "tokens/s: after the next scrape" in screen
    assert "200         -   1597" in screen
    assert "(last" not in screen and "p50" not in screen


def test_streams_are_per_key_when_the_series_has_no_model_label() -> None:
    screen = render(snap(0, 0.0), snap(1, 1.0), 80)
    assert "KEY        STREAMS\nci-runner        3\nlaptop           2\n" in screen
    assert "alice" not in screen.split("TOKENS/S")[0]  # a key with no stream is not listed


def test_an_idle_gate_says_so_instead_of_showing_empty_tables() -> None:
    text = "guardproxy_streams_active{key=\"laptop\"} 0\nguardproxy_queue_waiting 0\n"
    screen = render(parse_metrics(text, 0.0), parse_metrics(text, 1.0), 60)
    assert screen == ("guardproxy\nconnections -  streams 0  queue 0  requests/s 0  tokens/s 0\n"
                      "no request ended since the last scrape\n\nactive streams: none\n\ntokens/s: none\n")


@pytest.mark.parametrize("height", [None, 40, 24, 10])
def test_no_line_is_ever_wider_than_the_terminal(height: int | None) -> None:
    prev, now = snap(0, 0.0), snap(1, 1.0, streams_by_model=True, upstream_b_up=False)
    for width in range(0, 161):
        for p in (None, prev):
            lines = render(p, now, width, height=height).splitlines()
            assert lines and all(len(line) <= max(width, 1) for line in lines), (width, height)


def test_a_narrow_screen_keeps_the_numbers_and_shortens_names() -> None:
    screen = render(snap(0, 0.0), snap(1, 1.0, upstream_b_up=False), 30)
    assert "\nKEY       MODEL     PRO~  COM~\nlaptop    llama3.2   120   800\nci-runn~  qwen2.5~   400   200\n" in screen
    assert "\ngpu-b.lan:1~   DOWN          2\n" in screen
    assert "\nconnections 17  streams 5\nqueue 4  requests/s 7.00\ntokens/s 1520\n" in screen


def test_narrow_tables_give_up_text_before_numbers() -> None:
    rows = [["qwen2.5-coder:32b", "12345"], ["llama3.2", "7"]]
    assert table(["MODEL", "COMPLETION"], rows, 1, 40) == ["MODEL              COMPLETION", "qwen2.5-coder:32b       12345",
                                                           "llama3.2                    7"]
    assert table(["MODEL", "COMPLETION"], rows, 1, 16) == ["MODEL     COMPL~", "qwen2.5~   12345", "llama3.2       7"]
    assert table(["MODEL", "COMPLETION"], rows, 1, 8) == ["M  COMP~", "q  12345", "l      7"]


def test_a_short_terminal_cuts_tables_and_says_how_many_rows_are_hidden() -> None:
    screen = render(snap(0, 0.0), snap(1, 1.0), 80, height=30)
    assert screen.count("\n") <= 30
    assert "REQUESTS\nCODE  PER SEC  TOTAL\n200      6.00   1603\n401      1.00     53\n(+2 more)\n" in screen


@pytest.mark.parametrize("text, why", [
    ("404 page not found\n", "not Prometheus text"),
    ("<html><body>Bad gateway</body></html>\n", "not Prometheus text"),
    ('{"models":[]}', "not Prometheus text"),
    ("", "no guardproxy_ series"),
    ("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.5\n", "no guardproxy_ series"),
])
def test_what_is_not_guardproxy_metrics_is_refused(text: str, why: str) -> None:
    with pytest.raises(NotMetrics, match=why):
        parse_metrics(text, 0.0)


@pytest.mark.parametrize("x, shown", [(None, "-"), (0.0, "0"), (0.25, "0.25"), (7.0, "7.00"), (45.25, "45.2"),
                                      (812.4, "812"), (9999.0, "9999"), (12345.0, "12.3k"), (2.5e6, "2.5M")])
def test_rates_are_short(x: float | None, shown: str) -> None:
    assert fmt_rate(x) == shown


@pytest.mark.parametrize("url, target", [
    ("http://127.0.0.1:11435", "http://127.0.0.1:11435/metrics"),
    ("127.0.0.1:9464", "http://127.0.0.1:9464/metrics"),
    ("https://gate.example.org/", "https://gate.example.org:443/metrics"),
    ("http://[::1]:11435/metrics", "http://[::1]:11435/metrics"),
    ("http://gate.lan/ollama", "http://gate.lan:80/ollama/metrics"),
])
def test_the_address_is_completed_to_its_metrics_url(url: str, target: str) -> None:
    assert metrics_target(url).url == target


def test_a_bad_address_is_an_error_not_a_crash() -> None:
    for url in ("ftp://host/", "http://host:99999", "http://"):
        with pytest.raises(TopError):
            metrics_target(url)
    assert metrics_target("http://[::1]:8080").host == "::1"


def test_the_live_screen_redraws_in_place_and_fits_its_height() -> None:
    frame = _frame("a\nb\nc\nd\n", 3, ansi=True)
    assert frame == "\x1b[Ha\x1b[K\nb\x1b[K\n\x1b[J"
    assert _frame("a\nb\n", 3, ansi=False) == "a\nb\n\n"  # a console without ANSI: plain reprint
    assert render_error("cannot connect to 127.0.0.1 port 11435: connection refused", 1.0, 30) == (
        "guardproxy top: cannot connect\nto 127.0.0.1 port 11435:\nconnection refused\n\n"
        "retrying every 1s; Ctrl-C to\nquit\n")


def test_scrapes_of_metrics_are_not_counted_as_requests() -> None:
    """An idle gate that `top` (or Prometheus) scrapes shows no requests: a scrape has route="metrics"."""
    def scrape(n: int, at: float) -> Snapshot:
        return parse_metrics("# TYPE guardproxy_requests_total counter\n"
                             f'guardproxy_requests_total{{key="ops",route="metrics",code="200"}} {n}\n'
                             f'guardproxy_requests_total{{key="app",route="chat",code="200"}} 7\n', at)
    first, second = scrape(10, 0.0), scrape(11, 1.0)
    screen = render(first, second, 100)
    assert "requests/s 0 " in screen + " "
    assert "\nREQUESTS\nCODE  PER SEC  TOTAL\n200         0      7\n" in screen, screen
