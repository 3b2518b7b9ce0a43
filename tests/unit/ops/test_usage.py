"""The `usage` report over access-log lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardproxy.cli import main
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


def test_scrapes_of_metrics_are_not_credited_to_the_scraping_key() -> None:
    lines = (['{"time":"2026-11-26T10:00:00Z","client":"127.0.0.1","method":"GET","path":"/metrics","status":200,'
              '"key":"ops"}'] * 300
             + ['{"time":"2026-11-26T10:00:00Z","client":"127.0.0.1","method":"POST","path":"/api/chat","status":200,'
                '"key":"ops","prompt_tokens":3,"completion_tokens":4}'])
    out = summarise(lines, since=None, by="key")
    assert out.splitlines()[1].split() == ["ops", "1", "3", "4", "0"]
    assert "(300 scrapes of /metrics not counted)" in out


def test_usage_names_a_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--config", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'none.toml'}: cannot read: no such file" in err and "log.access" not in err


def test_usage_without_any_config_asks_for_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GUARDPROXY_CONFIG", raising=False)
    assert main(["usage"]) == 2
    assert "no config file found to read log.access from: pass --log FILE" in capsys.readouterr().err


def test_usage_takes_a_config_whose_key_is_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # `run` accepts a config without [[keys]] when $GUARDPROXY_API_KEY holds the key: so does `usage`.
    log = tmp_path / "access.log"
    log.write_text('{"time":"2026-11-26T10:00:00Z","client":"1.1.1.1","status":200,"key":"env"}\n')
    cfg = tmp_path / "guardproxy.toml"
    cfg.write_text(f"[log]\naccess = '{log}'\n")  # a literal string: a Windows path's backslashes
    monkeypatch.setenv("GUARDPROXY_API_KEY", "gp_" + "k" * 40)
    assert main(["usage", "--config", str(cfg), "--since", "all"]) == 0
    assert "env " in capsys.readouterr().out
