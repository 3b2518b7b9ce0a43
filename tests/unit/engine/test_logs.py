"""Operational messages: one logger, its levels, one plain line each, the journal's priority prefix."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from guardproxy.engine import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.LineFormatter())
    logs.setup("info", handler)
    try:
        yield out
    finally:
        logs.reset()


def test_one_line_per_message_and_a_word_for_warnings_only(stream: io.StringIO) -> None:
    logs.log.info("listening on %s", "http://127.0.0.1:11435")
    logs.log.warning("key \"old\" is stored in plaintext")
    logs.log.error("cannot listen on 127.0.0.1:11435: Address already in use")
    logs.log.debug("hidden at info")
    assert stream.getvalue().splitlines() == [
        "guardproxy: listening on http://127.0.0.1:11435", 'guardproxy: warning: key "old" is stored in plaintext',
        "guardproxy: cannot listen on 127.0.0.1:11435: Address already in use"]


def test_the_config_level_applies_unless_the_command_line_fixed_one(stream: io.StringIO) -> None:
    logs.apply_level("warning")
    logs.log.info("not shown")
    logs.apply_level("debug")
    logs.log.debug("shown")
    logs.setup("error", logging.StreamHandler(stream), pinned=True)
    logs.apply_level("debug")  # a reload's [log] level
    logs.log.warning("not shown either")
    assert stream.getvalue() == "guardproxy: debug: shown\n"
    assert logs.log.getEffectiveLevel() == logging.ERROR


def test_a_traceback_follows_its_line_and_the_journal_gets_a_priority_on_each_line() -> None:
    try:
        raise KeyError("boom")
    except KeyError:
        record = logging.LogRecord("guardproxy", logging.ERROR, __file__, 1, "internal error: %r", (KeyError("boom"),),
                                   sys.exc_info())
    plain = logs.LineFormatter().format(record).splitlines()
    assert plain[0] == "guardproxy: internal error: KeyError('boom')" and plain[1] == "Traceback (most recent call last):"
    journal = logs.LineFormatter(journal=True).format(record).splitlines()
    # journald reads each line's level on its own, and names the program itself
    assert journal == ["<3>" + plain[0].removeprefix("guardproxy: ")] + ["<3>" + line for line in plain[1:]]
    record.levelno, record.exc_info, record.exc_text = logging.WARNING, None, None
    assert logs.LineFormatter(journal=True).format(record) == "<4>warning: internal error: KeyError('boom')"


def test_the_journal_is_recognised_by_its_stream_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "stderr", "w") as f, open(tmp_path / "other", "w") as g:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.is_journal(f) and not logs.is_journal(g)  # (stdout may go to the journal, stderr elsewhere)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logs.is_journal(f)
    assert not logs.is_journal(io.StringIO())
