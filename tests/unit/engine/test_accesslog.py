"""The access-log record and writer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from guardproxy.engine.accesslog import AccessLog, LogRecord


def test_a_record_has_every_base_field_and_only_the_optional_ones_set() -> None:
    rec = LogRecord.new("203.0.113.7", 120)
    d = rec.to_dict()
    assert list(d) == ["time", "client", "method", "path", "status", "bytes_in", "bytes_out", "duration_ms",
                       "ttfb_ms", "key", "outcome", "request_id"]
    assert d["bytes_in"] == 120 and d["outcome"] == "ok" and d["ttfb_ms"] is None
    rec.model, rec.prompt_tokens, rec.completion_tokens = "llama3.2", 26, 0
    d = rec.to_dict()
    assert (d["model"], d["prompt_tokens"], d["completion_tokens"]) == ("llama3.2", 26, 0)  # 0 is a value
    assert "error" not in d


def test_lines_read_back_through_the_record() -> None:
    rec = LogRecord("2026-11-29T10:00:00Z", "::1", "POST", "/api/chat", 200, 300, 5000, 12.5, 3.25, "laptop",
                    model="qwen3:8b", prompt_tokens=12, completion_tokens=40, request_id="req-7.a_b")
    back = LogRecord.from_line(json.dumps(rec.to_dict()))
    assert back == rec


def test_reading_back_tolerates_foreign_lines() -> None:
    assert LogRecord.from_line("not json") is None
    assert LogRecord.from_line("[1, 2]") is None
    odd = LogRecord.from_line('{"status": "200", "prompt_tokens": true, "key": 5, "client": null}')
    assert odd is not None
    assert (odd.status, odd.prompt_tokens, odd.key, odd.client) == (0, None, "5", "-")


async def test_one_write_per_loop_turn(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    for i in range(3):
        rec = LogRecord.new("127.0.0.1", i)
        log.record(rec)
    assert path.read_text() == ""  # gathered, not yet written
    await asyncio.sleep(0)  # the flush was scheduled for the end of this turn
    lines = path.read_text().splitlines()
    assert [json.loads(line)["bytes_in"] for line in lines] == [0, 1, 2]
    log.close()


def test_without_a_loop_a_record_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.record(LogRecord.new("127.0.0.1", 1))
    assert json.loads(path.read_text())["client"] == "127.0.0.1"
    log.close()


def test_an_empty_target_turns_the_log_off(tmp_path: Path) -> None:
    log = AccessLog("")
    assert not log.enabled
    log.record(LogRecord.new("127.0.0.1", 1))
    log.close()


def test_a_broken_stream_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    assert log._stream is not None
    log._stream.close()  # as if stdout went away under a service manager
    log.record(LogRecord.new("127.0.0.1", 1))
    log.flush()


@pytest.mark.posix_only("renames a log file that is open, as logrotate does")
def test_reopen_follows_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.record(LogRecord.new("1.1.1.1", 1))
    path.rename(tmp_path / "access.log.1")
    log.record(LogRecord.new("2.2.2.2", 1))   # still the renamed file, as logrotate leaves it
    assert log.reopen()
    log.record(LogRecord.new("3.3.3.3", 1))
    log.close()
    assert [json.loads(x)["client"] for x in (tmp_path / "access.log.1").read_text().splitlines()] == \
        ["1.1.1.1", "2.2.2.2"]
    assert [json.loads(x)["client"] for x in path.read_text().splitlines()] == ["3.3.3.3"]


@pytest.mark.posix_only("renames a log file that is open, as logrotate does")
def test_reopen_that_fails_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    log = AccessLog(str(path))
    path.rename(tmp_path / "access.log.1")
    path.parent.rmdir()                        # nowhere to open the new file
    assert not log.reopen()
    log.record(LogRecord.new("1.1.1.1", 1))
    log.close()
    assert (tmp_path / "access.log.1").read_text().count("1.1.1.1") == 1
    assert not AccessLog("-").reopen() and not AccessLog("").reopen()  # stdout, off: nothing to reopen


def test_failed_writes_are_counted(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        return
    log = AccessLog("/dev/full")
    log.record(LogRecord.new("1.1.1.1", 1))
    log.close()                                # and closing with a full disk does not raise either
    assert log.write_errors >= 1
