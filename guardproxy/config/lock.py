"""One editor of a config file at a time: a lock file next to it, held across read, edit and rename.

Every command that edits the config (init, keygen, keys revoke, keys rotate) reads the
file, changes some lines and renames a new file over it; without a lock two of them at
once each start from the same text and the last rename wins, losing a key or undoing a
revocation.  The lock is on a separate file (`.NAME.lock` beside the file written, after
symlinks), because the config itself is replaced by every edit.  POSIX takes it with
flock(2), Windows with msvcrt.locking (LockFileEx); the lock file is never removed,
since removing it would let two editors lock two different files.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Concatenate, Iterator, ParamSpec, TypeVar

from .model import ConfigError

LOCK_TIMEOUT = 30.0  # seconds to wait for another edit (each takes milliseconds) before saying who holds it
P = ParamSpec("P")
R = TypeVar("R")
_held: dict[str, int] = {}  # lock files this process holds, with how many times: nested edits lock once


def lock_path(config: Path) -> Path:
    """The lock file of a config: next to the file that edits really write (a symlink's target)."""
    target = Path(os.path.realpath(config))
    return target.parent / f".{target.name}.lock"


@contextmanager
def config_lock(config: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold the config's edit lock for the `with` block (ConfigError if it cannot be had within `timeout`)."""
    path = lock_path(config)
    key = str(path)
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    fd = _open(path, config)
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                raise ConfigError(f"{config}: another command has been editing this file for {timeout:g} s "
                                  f"(it holds {path}); try again when it is done")
            time.sleep(0.005)
        _held[key] = 1
        try:
            yield path
        finally:
            del _held[key]
            _unlock(fd)
    finally:
        os.close(fd)


def locked(edit: Callable[Concatenate[Path, P], R]) -> Callable[Concatenate[Path, P], R]:
    """`edit(path, ...)` run under the lock of the config at `path`."""
    @functools.wraps(edit)
    def run(path: Path, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with config_lock(path):
            return edit(path, *args, **kwargs)
    return run


def _open(path: Path, config: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o600)
    except PermissionError:
        try:  # made by another account (root, say): a lock needs only a read handle on POSIX
            return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            pass
        raise ConfigError(f"{config}: cannot lock it for editing: {path}: permission denied "
                          f"(edit it as the account that owns it)") from None
    except OSError as e:
        raise ConfigError(f"{config}: cannot lock it for editing: {path}: {e.strerror or e}") from None


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # LockFileEx on the first byte, not waiting
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass  # closing the handle releases it as well
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
