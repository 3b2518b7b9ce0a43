"""`make demo` must show the whole checklist passing."""

from __future__ import annotations

import subprocess
import sys


def test_demo_checklist_passes() -> None:
    r = subprocess.run([sys.executable, "-m", "guardproxy.testing.demo"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9/9 checks passed" in r.stdout
    assert '"upstream":"gpu-b"' in r.stdout  # two hosts, each request on one of them
    assert "FAIL" not in r.stdout
    assert '"outcome":"refused"' in r.stdout  # the access log is shown too
