"""The token state file: additions flushed together, read back after a restart, old buckets dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardproxy.config.model import Budget
from guardproxy.config.values import BUDGET_WINDOWS
from guardproxy.decisions.budget import TokenBook
from guardproxy.engine.state.tokenfile import TokenFile, state_path

DAY = Budget(1000, 86400.0, "day")
T0 = 1_800_000_000.0


def test_state_path_is_next_to_the_config(tmp_path: Path) -> None:
    assert state_path(tmp_path / "guardproxy.toml", {}) == tmp_path / "guardproxy.state.sqlite3"


@pytest.mark.posix_only("systemd's STATE_DIRECTORY (a colon-separated list of POSIX paths)")
def test_state_path_is_in_systemds_state_directory(tmp_path: Path) -> None:
    # StateDirectory= with several directories sets a colon-separated list: the first is ours.
    environ = {"STATE_DIRECTORY": f"{tmp_path / 'state'}:{tmp_path / 'other'}"}
    assert state_path(Path("/etc/guardproxy/guardproxy.toml"), environ) == tmp_path / "state/guardproxy.state.sqlite3"
    assert state_path(tmp_path / "g.toml", {"STATE_DIRECTORY": ""}) == tmp_path / "g.state.sqlite3"


def test_additions_survive_a_reopen_and_old_buckets_go(tmp_path: Path) -> None:
    book = TokenBook()
    f = TokenFile(tmp_path / "s.sqlite3")
    assert f.add("k", "day", book.add("k", DAY, T0, 300), 300)        # the first addition: flush due
    assert not f.add("k", "day", book.add("k", DAY, T0 + 5, 200), 200)
    f.add("k", "day", book.add("k", DAY, T0 - 86400, 999), 999)        # a day ago: outside the window
    f.flush(BUDGET_WINDOWS, T0 + 10)
    f.add("k", "day", book.add("k", DAY, T0 + 20, 1), 1)
    f.flush(BUDGET_WINDOWS, T0 + 30)
    f.close()
    again, f2 = TokenBook(), TokenFile(tmp_path / "s.sqlite3")
    f2.load(again, BUDGET_WINDOWS, T0 + 40)
    assert again.used("k", DAY, T0 + 40) == 501 == book.used("k", DAY, T0 + 40)
    assert f2._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 1   # summed into one bucket row
    f2.close()
