"""Value parsers: durations, sizes, rates, addresses."""

from __future__ import annotations

import pytest

from guardproxy.config.model import Rate
from guardproxy.config.values import parse_duration, parse_hostport, parse_rate, parse_upstream


def test_durations() -> None:
    assert parse_duration(5) == 5.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("10min") == 600.0
    assert parse_duration("1h") == 3600.0
    for bad in ("soon", "-1s", True, -3, [1], float("nan"), float("inf"), "9" * 400 + "s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_addresses() -> None:
    assert parse_hostport("0.0.0.0:11435") == ("0.0.0.0", 11435)
    assert parse_hostport("[::1]:8080") == ("::1", 8080)
    assert parse_upstream("http://[::1]:11434").authority == "[::1]:11434"
    assert parse_upstream("http://gpu-box").port == 80
    for bad in ("11435", "host:99999", "[zz]:1", "a:b:1"):
        with pytest.raises(ValueError):
            parse_hostport(bad)
    for bad in ("https://x:1", "127.0.0.1:11434", "http://x:0", "http://x/path"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


@pytest.mark.parametrize("text,rate", [("30/min", Rate(30, 60)), ("5/s", Rate(5, 1)), ("1000/h", Rate(1000, 3600)),
                                       ("10/5min", Rate(10, 300))])
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
