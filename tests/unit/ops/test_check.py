"""The checklist's pure parts: URLs, judging a CORS preflight, timing a token stream, the table."""

from __future__ import annotations

import itertools

import pytest

from guardproxy.ops.check import CheckResult, Target, format_table, judge_preflight, parse_target, read_ndjson_stream


def test_parse_target() -> None:
    assert parse_target("http://gpu-box:11435") == Target("http", "gpu-box", 11435, "")
    assert parse_target("https://llm.example.org/") == Target("https", "llm.example.org", 443, "")
    assert parse_target("http://[::1]:8080/ollama/") == Target("http", "::1", 8080, "/ollama")
    assert parse_target("127.0.0.1:11435") == Target("http", "127.0.0.1", 11435, "")
    assert parse_target("http://[::1]:8080").display == "http://[::1]:8080"


@pytest.mark.parametrize("url", ["ftp://host", "http://:80", "http://host:99999"])
def test_parse_target_refuses(url: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_target(url)


ORIGIN = "https://app.example.com"


def test_preflight_allowed() -> None:
    ok, detail = judge_preflight(204, {"Access-Control-Allow-Origin": ORIGIN,
                                       "Access-Control-Allow-Headers": "Content-Type, X-API-Key"}, ORIGIN)
    assert ok and detail.startswith("204")
    assert judge_preflight(200, {"access-control-allow-origin": "*", "access-control-allow-headers": "*"}, ORIGIN)[0]


@pytest.mark.parametrize("status,headers,why", [
    (401, {}, "got 401"),
    (204, {}, "no Access-Control-Allow-Origin"),
    (204, {"Access-Control-Allow-Origin": "https://other.example"}, "not 'https://app.example.com'"),
    (204, {"Access-Control-Allow-Origin": ORIGIN, "Access-Control-Allow-Headers": "content-type"}, "X-API-Key"),
])
def test_preflight_refused_says_why(status: int, headers: dict[str, str], why: str) -> None:
    ok, detail = judge_preflight(status, headers, ORIGIN)
    assert not ok and why in detail


def test_stream_timing_uses_first_and_last_token() -> None:
    lines = [b'{"response":" a","done":false}\n', b"\n", b'{"response":" b","done":false}\n',
             b'{"response":" c","done":false}\n', b'{"response":"","done":true,"eval_count":3}\n',
             b'{"response":"never read"}\n']
    clock = itertools.count(start=100.0, step=0.5).__next__  # each line 0.5 s after the previous
    stats = read_ndjson_stream(lines, clock, 99.0)
    assert (stats.tokens, stats.done) == (3, True)
    assert stats.first_token_s == 1.0 and stats.last_token_s == 2.0
    assert stats.tokens_per_s == 2.0


def test_stream_error_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="model not found"):
        read_ndjson_stream([b'{"error":"model not found"}\n'], lambda: 0.0, 0.0)


def test_table_counts_passes_and_failures() -> None:
    text = format_table("http://x:1", [CheckResult("a", True, "200"), CheckResult("longer name", False, "got 200")])
    assert "  a            PASS  200" in text and "  longer name  FAIL  got 200" in text
    assert text.endswith("1 passed, 1 failed")


@pytest.mark.parametrize("line", [b"[1, 2]\n", b"5\n", b'"done"\n', b"null\n"])
def test_stream_line_that_is_json_but_not_an_object_is_an_error(line: bytes) -> None:
    with pytest.raises(ValueError, match="not an Ollama stream line"):
        read_ndjson_stream([b'{"response":" a","done":false}\n', line], lambda: 0.0, 0.0)


@pytest.mark.parametrize("argv", [["check", "http://x:1", "--key", "k", "--timeout", value]
                                  for value in ("-1", "0", "nan", "inf", "soon")]
                         + [["top", "--interval", value] for value in ("0", "-0.5", "nan")])
def test_durations_at_or_below_zero_are_refused_by_the_parser(argv: list[str],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from guardproxy import cli
    with pytest.raises(SystemExit) as exit:
        cli._parser().parse_args(argv)
    assert exit.value.code == 2
    assert f"{argv[-2]}: expected a number of seconds above 0" in capsys.readouterr().err


def test_a_positive_duration_is_taken() -> None:
    from guardproxy import cli
    assert cli._parser().parse_args(["check", "http://x:1", "--key", "k", "--timeout", "0.5"]).timeout == 0.5
    assert cli._parser().parse_args(["top", "--interval", "2"]).interval == 2.0
