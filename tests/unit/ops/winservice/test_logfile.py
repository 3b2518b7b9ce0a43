"""The service's log files: next to the config, rotated by size by logging's own handler, stamped line by line."""

from __future__ import annotations

import logging
import ntpath
import posixpath
import re
from pathlib import Path

import pytest

from guardproxy.engine import logs
from guardproxy.ops.winservice import logfile as ws

CFG = r"C:\ProgramData\guardproxy\guardproxy.toml"


def test_logs_live_next_to_the_config() -> None:
    assert ws.service_log_paths(CFG, ntpath) == (r"C:\ProgramData\guardproxy\guardproxy.log",
                                                 r"C:\ProgramData\guardproxy\access.log")
    assert ws.service_log_paths("/etc/gp/guardproxy.toml", posixpath) == ("/etc/gp/guardproxy.log", "/etc/gp/access.log")


def test_the_sizes_are_the_services_own() -> None:
    handler = ws.rotating(str(Path(__file__)), stamp=False)  # opened for append, never written here
    handler.close()
    assert (handler.maxBytes, handler.backupCount) == (10 * 1024 * 1024, 5)


def test_a_stream_rotates_by_size_and_keeps_n_backups(tmp_path: Path) -> None:
    path = str(tmp_path / "access.log")
    w = ws.HandlerStream(ws.rotating(path, stamp=False, max_bytes=100, backups=2))
    for i in range(10):
        w.write(f"line {i:02d} " + "x" * 30 + "\n")  # 39 bytes: two lines fit in 100
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["access.log", "access.log.1", "access.log.2"]
    assert Path(path).read_text() == "".join(f"line {i:02d} {'x' * 30}\n" for i in (8, 9))
    assert Path(path + ".1").read_text().startswith("line 06")
    assert Path(path + ".2").read_text().startswith("line 04")
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())


def test_lines_written_in_pieces_are_whole_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    w = ws.HandlerStream(ws.rotating(str(path), stamp=False))
    w.write('{"a":')
    w.write('1}\n{"b":2}\n{"c"')
    assert path.read_text() == '{"a":1}\n{"b":2}\n'
    w.write(":3}\n")
    w.close()
    assert path.read_text() == '{"a":1}\n{"b":2}\n{"c":3}\n'
    with pytest.raises(ValueError):
        w.write("after close")


def test_messages_are_stamped_and_appended_to_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.log"
    path.write_text("2027-01-15T08:00:00Z guardproxy: an earlier run\n")
    logs.setup("info", ws.rotating(str(path), stamp=True))
    try:
        logs.log.info("listening on %s", "http://127.0.0.1:11435")
        logs.log.warning("key \"x\" is stored in plaintext")
        logs.log.debug("not at info")
    finally:
        logs.reset()
    lines = path.read_text().splitlines()
    assert lines[0] == "2027-01-15T08:00:00Z guardproxy: an earlier run"
    assert [re.sub(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", "", line) for line in lines[1:]] == [
        "guardproxy: listening on http://127.0.0.1:11435", 'guardproxy: warning: key "x" is stored in plaintext']
    assert not logging.getLogger("guardproxy").handlers  # reset leaves no file open
