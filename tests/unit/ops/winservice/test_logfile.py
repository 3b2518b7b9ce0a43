"""The service's log files: next to the config, rotated by size, stamped line by line."""

from __future__ import annotations

import ntpath
from pathlib import Path

import pytest

from guardproxy.ops.winservice import logfile as ws

CFG = r"C:\ProgramData\guardproxy\guardproxy.toml"


def test_logs_live_next_to_the_config() -> None:
    assert ws.service_log_paths(CFG, ntpath) == (r"C:\ProgramData\guardproxy\guardproxy.log",
                                                 r"C:\ProgramData\guardproxy\access.log")
    assert ws.service_log_paths("/etc/gp/guardproxy.toml") == ("/etc/gp/guardproxy.log", "/etc/gp/access.log")


def test_rotating_writer_rotates_by_size_and_keeps_n_backups(tmp_path: Path) -> None:
    path = str(tmp_path / "guardproxy.log")
    w = ws.RotatingWriter(path, max_bytes=100, backups=2)
    for i in range(10):
        w.write(f"line {i:02d} " + "x" * 30 + "\n")  # 39 bytes: two lines fit in 100
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["guardproxy.log", "guardproxy.log.1", "guardproxy.log.2"]
    assert Path(path).read_text().startswith("line 08") and "line 09" in Path(path).read_text()
    assert Path(path + ".1").read_text().startswith("line 06")
    assert Path(path + ".2").read_text().startswith("line 04")
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())


def test_rotating_writer_stamps_each_line_once(tmp_path: Path) -> None:
    path = tmp_path / "guardproxy.log"
    w = ws.RotatingWriter(str(path), stamp=True, clock=lambda: 1_800_000_000.0)
    w.write("guardproxy listening")
    w.write(" on 127.0.0.1\nsecond\n")
    w.write("third\n")
    w.close()
    assert path.read_text() == ("2027-01-15T08:00:00Z guardproxy listening on 127.0.0.1\n"
                                "2027-01-15T08:00:00Z second\n2027-01-15T08:00:00Z third\n")
    with pytest.raises(ValueError):
        w.write("after close")


def test_rotating_writer_appends_to_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("old\n")
    w = ws.RotatingWriter(str(path), max_bytes=10, backups=1)
    w.write("new line\n")  # 4 + 9 > 10: the old file moves aside first
    w.close()
    assert path.read_text() == "new line\n" and (tmp_path / "access.log.1").read_text() == "old\n"
