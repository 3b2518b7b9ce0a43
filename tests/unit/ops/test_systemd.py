"""Reading `systemctl show -p LoadState,ActiveState,SubState guardproxy`, from literal outputs."""

from __future__ import annotations

import pytest

from guardproxy.ops.systemd import parse_unit_state, unit_state


@pytest.mark.parametrize("output, state", [
    ("LoadState=loaded\nActiveState=active\nSubState=running\n", "active (running)"),
    ("LoadState=loaded\nActiveState=inactive\nSubState=dead\n", "inactive (dead)"),
    ("LoadState=loaded\nActiveState=failed\nSubState=failed\n", "failed"),
    ("LoadState=loaded\nActiveState=activating\nSubState=auto-restart\n", "activating (auto-restart)"),
    ("LoadState=loaded\nActiveState=reloading\nSubState=reload\n", "reloading (reload)"),
    ("LoadState=masked\nActiveState=inactive\nSubState=dead\n", "masked; inactive (dead)"),
    ("LoadState=bad-setting\nActiveState=inactive\nSubState=dead\n", "bad-setting; inactive (dead)"),
    # systemctl prints the properties in its own order, not the order asked for
    ("SubState=running\r\nActiveState=active\r\nLoadState=loaded\r\n", "active (running)"),
    ("LoadState=loaded\n", "unknown"),
])
def test_an_installed_unit_reads_as_its_state(output: str, state: str) -> None:
    assert parse_unit_state(output) == state


@pytest.mark.parametrize("output", [
    "LoadState=not-found\nActiveState=inactive\nSubState=dead\n",  # what systemctl says of a unit never installed
    "",
    "System has not been booted with systemd as init system (PID 1). Can't operate.\n",
    "ActiveState=active\nSubState=running\n",
])
def test_no_unit_reads_as_none(output: str) -> None:
    assert parse_unit_state(output) is None


def test_a_unit_that_is_not_installed_is_none_wherever_this_runs() -> None:
    # With systemd: LoadState=not-found; in a container without it: systemctl fails; off Linux: not asked.
    assert unit_state("guardproxy-no-such-unit-3f9c") is None


@pytest.mark.parametrize("state, level, words", [
    ("active (running)", "ok", 'systemd unit "guardproxy" is active (running)'),
    ("failed", "warn", "`sudo systemctl start guardproxy`; if it stops again, `journalctl -u guardproxy -e`"),
    ("inactive (dead)", "warn", "`sudo systemctl start guardproxy`"),
    ("activating (auto-restart)", "warn", "`systemctl status guardproxy`"),
    ("masked; inactive (dead)", "warn", 'is masked; inactive (dead)'),
    (None, "info", 'no systemd unit "guardproxy" installed -- fix: to start guardproxy on boot, see docs/linux-service.md'),
])
def test_doctor_reports_the_units_state(state: str | None, level: str, words: str) -> None:
    from guardproxy.ops.doctor import check_systemd_unit
    (finding,) = check_systemd_unit("guardproxy", state)
    assert finding.level == level and words in finding.line()

