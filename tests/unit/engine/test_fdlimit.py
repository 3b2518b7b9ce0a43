"""The open-file limit: raised towards the hard limit, a warning when it cannot be."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")
def test_open_file_limit_warning_when_it_cannot_be_raised() -> None:
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256));"
            "from guardproxy.engine.fdlimit import check_open_files;"
            "print(check_open_files(10000)); print(check_open_files(0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    warning, fine = out.strip().splitlines()
    assert "open-file limit is 256" in warning and "max_connections = 10000" in warning
    assert fine == "None"


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")
def test_open_file_limit_is_raised_towards_the_hard_limit() -> None:
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096));"
            "from guardproxy.engine.fdlimit import check_open_files;"
            "print(check_open_files(1000)); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "1256"]
