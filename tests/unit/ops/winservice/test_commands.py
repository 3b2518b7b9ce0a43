"""`guardproxy service ...` on the command line."""

from __future__ import annotations

import sys

import pytest

from guardproxy import cli
from guardproxy.ops.winservice import commands as ws

CFG = r"C:\ProgramData\guardproxy\guardproxy.toml"


@pytest.mark.skipif(sys.platform == "win32", reason="the message is for other systems")
@pytest.mark.parametrize("action", ["install", "uninstall", "start", "stop", "status"])
def test_service_commands_say_they_are_windows_only(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["service", action]) == ws.EXIT_NOT_WINDOWS
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only on Windows" in err


def test_service_install_takes_config_name_and_firewall(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli._parser().parse_args(["service", "install", "--config", CFG, "--name", "gp2", "--open-firewall"])
    assert (args.service_command, args.config, args.name, args.open_firewall) == ("install", CFG, "gp2", True)
    assert cli._parser().parse_args(["service", "status"]).name == "guardproxy"
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["service"])
    capsys.readouterr()
