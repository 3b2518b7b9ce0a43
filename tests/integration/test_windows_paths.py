"""What differs on Windows, run on every platform where it means something (and under Windows
CPython by `make windows`): a config edit over a file another process holds open, a read-only
config, %ProgramData%, and the one-file executable's watch on its first process.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import pytest

from guardproxy.config.edit import revoke_key
from guardproxy.config.model import ConfigError
from guardproxy.config.paths import existing_config, find_config, service_config_path
from guardproxy.config.write import create_config, generate_key
from guardproxy.engine import parent

ON_WINDOWS = sys.platform == "win32"
TODAY = date(2026, 12, 6)

# Opens the file the way most Windows programs do (no delete sharing) and keeps it open until its stdin closes.
HOLD = "import sys; f = open(sys.argv[1], 'rb'); print('held', flush=True); sys.stdin.read()"


def config(tmp_path: Path) -> Path:
    path = tmp_path / "guardproxy.toml"
    create_config(path, generate_key())
    return path


def leftovers(path: Path) -> list[Path]:
    """Temporary files an edit left next to the config (its lock file stays, by design)."""
    return [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.") and p.name.endswith(".tmp")]


class Holder:
    """Another process with the file open."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(30)


def test_an_edit_over_a_file_another_process_holds_open_loses_nothing(tmp_path: Path) -> None:
    path = config(tmp_path)
    before = path.read_bytes()
    holder = Holder(path)
    try:
        try:
            revoke_key(path, "default", TODAY)
            edited = True
        except ConfigError as e:
            # Windows may refuse to replace a file held open (Wine does not): one line naming the
            # file, nothing lost.
            assert ON_WINDOWS, e
            assert str(path) in str(e) and "the file is unchanged" in str(e), e
            assert "\n" not in str(e)
            edited = False
        if not ON_WINDOWS:
            assert edited  # POSIX renames over an open file
        after = path.read_bytes()
        assert (after != before and b"revoked = 2026-12-06" in after) if edited else after == before
        assert leftovers(path) == []
    finally:
        holder.release()
    if not edited:
        revoke_key(path, "default", TODAY)  # once the other program lets go, the same edit goes through
    assert b"revoked = 2026-12-06" in path.read_bytes()
    assert leftovers(path) == []


def test_an_edit_of_a_read_only_config_loses_nothing(tmp_path: Path) -> None:
    path = config(tmp_path)
    before = path.read_bytes()
    os.chmod(path, stat.S_IREAD)
    try:
        try:
            revoke_key(path, "default", TODAY)
            edited = True
        except ConfigError as e:
            # POSIX (and Wine) rename over a read-only file in a writable directory; Windows refuses.
            assert ON_WINDOWS, e
            assert str(path) in str(e) and "read-only" in str(e) and "the file is unchanged" in str(e), e
            edited = False
        if edited:
            assert b"revoked = 2026-12-06" in path.read_bytes()
            assert not path.stat().st_mode & stat.S_IWRITE  # it stays read-only
        else:
            assert path.read_bytes() == before
        assert leftovers(path) == []
    finally:
        os.chmod(path, stat.S_IREAD | stat.S_IWRITE)


@pytest.mark.windows_only("%ProgramData% and a case-insensitive environment exist on Windows only")
def test_the_machine_wide_config_is_found_in_programdata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("PROGRAMDATA", str(data))  # Windows' environment ignores case: ProgramData is the same
    monkeypatch.delenv("GUARDPROXY_CONFIG", raising=False)
    monkeypatch.chdir(work)
    machine = data / "guardproxy" / "guardproxy.toml"
    assert Path(service_config_path(None, os.environ)) == machine
    assert existing_config(None) is None  # neither ./guardproxy.toml nor the machine-wide one yet
    machine.parent.mkdir(parents=True)
    create_config(machine, generate_key())
    assert existing_config(None) == machine
    assert find_config(None).path == machine
    (work / "guardproxy.toml").write_text((machine.read_text()))
    assert find_config(None).path == Path("guardproxy.toml")  # the folder's own config comes first


def test_a_plain_interpreter_watches_no_parent() -> None:
    assert parent.onefile_parent() is None
    assert parent.watch_parent(lambda: None) is False


@pytest.mark.windows_only("waits on a Windows process handle")
def test_the_parent_watch_sees_its_process_end() -> None:
    # The one-file child watches a process running its own image: here, another python.exe.
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    gone = threading.Event()
    try:
        assert parent._watch_windows(proc.pid, gone.set)
        assert not gone.wait(0.2)
        proc.kill()  # TerminateProcess, as `taskkill /F /PID` without /T
        assert gone.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(15)
