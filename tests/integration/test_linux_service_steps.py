"""docs/linux-service.md: its install steps, run in order inside a temporary root, up to `systemd-analyze verify`.

The commands are the page's own, read from its first `sh` block. Three things differ, each for a reason a
test cannot avoid: `sudo` is dropped (the test is its own root), absolute paths move under a temporary
directory (a test never writes /opt or /etc), and the new environment sees the test environment's packages
through a .pth file, so pip finds every dependency installed (it fetches only its build backend): what is
checked is the order of the steps and the unit's real ExecStart path.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "linux-service.md"
PLACES = ("/opt/guardproxy", "/usr/local/bin", "/etc/systemd/system", "/etc/guardproxy")


def install_steps() -> list[str]:
    """The page's commands up to and including `systemd-analyze verify`."""
    block = re.search(r"```sh\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert block, "docs/linux-service.md has no sh block"
    steps: list[str] = []
    for line in block.group(1).splitlines():
        command = line.split("  #", 1)[0].strip()
        if not command or command.startswith("cd "):
            continue
        steps.append(command)
        if "systemd-analyze verify" in command:
            return steps
    raise AssertionError("the steps never reach `systemd-analyze verify`")


def test_the_steps_install_from_the_source_and_link_the_units_program_before_verifying() -> None:
    steps = install_steps()
    venv = next(i for i, s in enumerate(steps) if "-m venv /opt/guardproxy" in s)
    pip = next(i for i, s in enumerate(steps) if "/opt/guardproxy/bin/pip install ." in s)
    link = next(i for i, s in enumerate(steps) if "/usr/local/bin/guardproxy" in s and s.startswith(("sudo ln", "ln")))
    init = next(i for i, s in enumerate(steps) if " init " in s)
    verify = len(steps) - 1
    assert venv < pip < link < init < verify, steps
    assert not any(re.search(r"pip install guardproxy\b", s) for s in steps), "guardproxy is not on the index"


def in_root(command: str, root: Path) -> list[str]:
    words = shlex.split(command)
    if words[0] == "sudo":
        words = words[1:]
    out = []
    for w in words:
        for place in PLACES:
            if w == place or w.startswith(place + "/"):
                w = str(root) + w
                break
        out.append(w)
    if out[0] == "guardproxy":  # found on PATH in /usr/local/bin, where the link put it
        out[0] = f"{root}/usr/local/bin/guardproxy"
    if out[:2] == ["python3", "-m"]:
        out[0] = sys.executable
    if len(out) > 2 and out[0].endswith("/bin/pip") and out[1] == "install":
        out[2:2] = ["--quiet"]
    return out


def lend_packages(venv: Path) -> None:
    """Let the new environment import what this one has installed (h11, setuptools, ...)."""
    import sysconfig
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "lent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: apt-get install systemd)")
def test_the_steps_run_in_order_up_to_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for existing in ("opt", "usr/local/bin", "etc/systemd/system"):  # on every Debian machine already
        (root / existing).mkdir(parents=True)
    unit_in_root = root / "etc/systemd/system/guardproxy.service"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    for command in install_steps():
        argv = in_root(command, root)
        if argv[:2] == ["systemd-analyze", "verify"]:
            # The unit names /usr/local/bin/guardproxy: inside the temporary root, that is the link the steps made.
            text = unit_in_root.read_text(encoding="utf-8")
            assert "ExecStart=/usr/local/bin/guardproxy run " in text
            unit_in_root.write_text(text.replace("ExecStart=/usr/local/bin/guardproxy ",
                                                 f"ExecStart={root}/usr/local/bin/guardproxy "), encoding="utf-8")
        if argv[0].endswith("/bin/pip"):
            lend_packages(root / "opt/guardproxy")
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
        if argv[:2] == ["systemd-analyze", "verify"]:
            complaints = [l for l in (done.stdout + done.stderr).splitlines() if "guardproxy.service" in l]
            assert complaints == [], done.stdout + done.stderr
    program = root / "usr/local/bin/guardproxy"
    assert program.is_symlink() and os.access(program, os.X_OK)
    config = root / "etc/guardproxy/guardproxy.toml"
    assert config.stat().st_mode & 0o777 == 0o644 and "[[keys]]" in config.read_text(encoding="utf-8")
    version = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
