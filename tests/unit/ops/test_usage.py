"""The `usage` report over access-log lines."""

from __future__ import annotations

from guardproxy.ops.usage import summarise


def test_usage_report() -> None:
    lines = [
        '{"time":"2026-11-26T10:00:00Z","client":"1.1.1.1","status":200,"key":"app","model":"llama3.2","prompt_tokens":26,"completion_tokens":5}',
        '{"time":"2026-11-26T10:00:01Z","client":"1.1.1.1","status":200,"key":"app","model":"qwen3:8b","prompt_tokens":4,"completion_tokens":1}',
        '{"time":"2026-11-26T10:00:02Z","client":"1.1.1.1","status":429,"key":"app"}',
    ] + ['{"time":"2026-11-26T10:00:03Z","client":"6.6.6.6","status":401,"key":null}'] * 6 + [
        '{"time":"2026-11-20T10:00:00Z","client":"1.1.1.1","status":200,"key":"old","completion_tokens":9}', "junk"]
    from datetime import datetime, timezone
    now = datetime(2026, 11, 26, 12, tzinfo=timezone.utc).timestamp()
    out = summarise(lines, since=86400, by="key", now=now)
    rows = {l.split()[0]: l.split()[1:] for l in out.splitlines()[1:3]}
    assert rows["app"] == ["3", "30", "6", "1"] and rows["-"] == ["6", "0", "0", "6"]
    assert "old" not in out and "6.6.6.6  6" in out and "1 lines were not JSON" in out
    by_model = summarise(lines, since=None, by="model", now=now)
    assert "llama3.2" in by_model and "qwen3:8b" in by_model
