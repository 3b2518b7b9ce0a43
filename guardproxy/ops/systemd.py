"""The state of the guardproxy systemd unit, for `doctor` on Linux.

It asks `systemctl show` for three properties and reads its key=value lines;
the parser is a pure function over that text, tested with literal outputs.
No unit installed, no systemctl, or no systemd running (a container) all
read as "no unit": None.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PROPERTIES = ("LoadState", "ActiveState", "SubState")


def parse_unit_state(text: str) -> str | None:
    """"active (running)", "failed", "masked; inactive (dead)", ...; None when the unit is not installed."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name in PROPERTIES:
            props[name] = value.strip()
    load = props.get("LoadState", "")
    if load in ("", "not-found"):
        return None
    active, sub = props.get("ActiveState", "") or "unknown", props.get("SubState", "")
    state = active if sub in ("", active) else f"{active} ({sub})"
    return state if load == "loaded" else f"{load}; {state}"


def has_systemd() -> bool:
    """Whether systemd runs this machine (sd_booted(3): the directory it creates at boot exists)."""
    return sys.platform.startswith("linux") and os.path.isdir("/run/systemd/system")


def unit_state(name: str = "guardproxy", timeout: float = 5.0) -> str | None:
    """The unit's state as `parse_unit_state` words it, or None where there is no such unit or no systemd."""
    if not sys.platform.startswith("linux"):
        return None
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        done = subprocess.run([systemctl, "show", "-p", ",".join(PROPERTIES), "--", name],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:  # "System has not been booted with systemd as init system", no bus, ...
        return None
    return parse_unit_state(done.stdout)
