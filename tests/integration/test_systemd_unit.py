"""packaging/systemd/guardproxy.service: checked by systemd's own tools where they exist, and read as data."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "guardproxy.service"
ENTRY_POINT = "ExecStart=/usr/local/bin/guardproxy run "


def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    return unit


def assignments(key: str) -> list[str]:
    """Every value given to `key` (systemd keys may repeat; configparser keeps only the last)."""
    return [line.split("=", 1)[1] for line in UNIT.read_text(encoding="utf-8").splitlines()
            if line.startswith(key + "=")]


def test_the_unit_is_hardened_as_the_issue_asks() -> None:
    s = read_unit()["Service"]
    expected = {
        "DynamicUser": "yes", "StateDirectory": "guardproxy", "ConfigurationDirectory": "guardproxy",
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "", "LimitNOFILE": "65536", "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "ProtectHome": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "RestrictSUIDSGID": "yes",
        "SystemCallErrorNumber": "EPERM",
    }
    assert {k: s.get(k) for k in expected} == expected
    assert assignments("SystemCallFilter") == ["@system-service", "~@privileged"]
    assert assignments("CapabilityBoundingSet") == [""] and assignments("AmbientCapabilities") == [""]
    assert s["ExecStart"] == "/usr/local/bin/guardproxy run --config /etc/guardproxy/guardproxy.toml"
    assert read_unit()["Install"]["WantedBy"] == "multi-user.target"


def test_ports_below_1024_and_the_other_ways_to_start_are_shown_commented_out() -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert "\n#CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n#AmbientCapabilities=CAP_NET_BIND_SERVICE\n" in text
    assert "\n#ExecStart=/usr/bin/env python3 -m guardproxy run --config /etc/guardproxy/guardproxy.toml\n" in text
    assert "\n#Environment=GUARDPROXY_CONFIG=/etc/guardproxy/guardproxy.toml\n" in text
    assert "\r" not in text and text.isascii()


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this Python: `verify` checks that the program exists,
    and /usr/local/bin/guardproxy is not installed on a test machine."""
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(ENTRY_POINT) == 1
    copy = tmp_path / "guardproxy.service"
    copy.write_text(text.replace(ENTRY_POINT, f"ExecStart={sys.executable} -m guardproxy run "), encoding="utf-8")
    return copy


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (Debian: apt-get install systemd)")


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(verifiable_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    # An unknown or misspelt key is only a warning (exit 0), so the output must be silent about the unit.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "guardproxy.service" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr


@needs_analyze
def test_systemd_rates_the_unit_as_little_exposed(tmp_path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager",
                           str(verifiable_copy(tmp_path))], capture_output=True, text=True, timeout=60, check=False)
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    assert done.returncode == 0, done.stdout + done.stderr  # exposure 2.0 or less out of 10
