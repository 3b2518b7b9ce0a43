"""Token budgets kept across a restart, and `usage` reading them from the same state file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from guardproxy.config.load import load_config
from guardproxy.engine.state.local import Budgets
from guardproxy.ops.budgets import budget_report

CONFIG = '[[keys]]\nname = "app"\nkey_sha256 = "' + "a" * 64 + '"\ntokens = "1000/day"\n'


@pytest.mark.posix_only("systemd's STATE_DIRECTORY (a colon-separated list of POSIX paths)")
def test_budgets_live_in_systemds_state_directory_and_survive_a_restart(tmp_path: Path) -> None:
    # The hardened unit reads its config in /etc and may write only in StateDirectory=.
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    (etc / "guardproxy.toml").write_text(CONFIG)
    config = load_config(etc / "guardproxy.toml")
    environ = {"STATE_DIRECTORY": str(state)}
    budget = config.keys[0].tokens
    assert budget is not None

    first = Budgets(config, io.StringIO(), environ)
    first.spend("app", budget, 300)
    first.close()
    assert [p.name for p in etc.iterdir()] == ["guardproxy.toml"]
    assert (state / "guardproxy.state.sqlite3").exists()

    again = Budgets(config, io.StringIO(), environ)
    assert again.book.used("app", budget, again.wall()) == 300
    again.close()
    assert "app  1000/day   300   700" in budget_report(config, environ)
