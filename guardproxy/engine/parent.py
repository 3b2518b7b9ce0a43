"""The one-file executable's first process: when it goes, the server stops.

A PyInstaller one-file executable runs as two processes: a bootloader that
unpacks the bundle and waits, and its child (the same .exe) that runs
guardproxy.  Whoever stops "guardproxy.exe" stops the bootloader: `taskkill
/PID` without /T, a service manager ending the process it started, a
supervisor's kill.  Left alone, the child keeps serving with nobody to stop
it (PyInstaller #4858).  So the child watches its parent and, when it is
gone, stops the way a Ctrl+C would: gracefully, streams get the grace period.

On Windows a thread waits on the parent's process handle; on Linux the
kernel sends SIGTERM when the parent dies (PR_SET_PDEATHSIG), which `serve`
already handles.  A plain `python -m guardproxy` watches nothing.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable


def onefile_parent() -> int | None:
    """The pid of the one-file bootloader that started this process, or None when there is none.

    The bootloader and its child are the same executable, so the parent is the
    bootloader exactly when it runs this process's own image: a one-folder build,
    or a service manager that started a one-file child itself, has another parent.
    """
    if not getattr(sys, "frozen", False):
        return None
    ppid = os.getppid()
    if ppid <= 1:
        return None
    image = _process_image(ppid)
    if image is None or os.path.normcase(os.path.realpath(image)) != os.path.normcase(
            os.path.realpath(sys.executable)):
        return None
    return ppid


def watch_parent(on_gone: Callable[[], None]) -> bool:
    """Call `on_gone` (from another thread: it must be thread-safe) when the one-file parent exits.

    Returns False when there is no such parent to watch.
    """
    ppid = onefile_parent()
    if ppid is None:
        return False
    if sys.platform == "win32":
        return _watch_windows(ppid, on_gone)
    if sys.platform.startswith("linux"):
        return _watch_linux(ppid)
    return False


def _process_image(pid: int) -> str | None:
    if sys.platform == "win32":
        handle = _open_process(pid)
        if handle is None:
            return None
        try:
            return _image_of(handle)
        finally:
            _kernel32().CloseHandle(handle)
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


# --- Windows -------------------------------------------------------------------

_SYNCHRONIZE = 0x00100000
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_INFINITE = 0xFFFFFFFF
_WAIT_OBJECT_0 = 0


def _kernel32() -> Any:
    import ctypes
    from ctypes import wintypes
    k32 = getattr(ctypes, "WinDLL")("kernel32", use_last_error=True)  # (Windows only)
    k32.OpenProcess.restype = wintypes.HANDLE
    k32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    k32.WaitForSingleObject.restype = wintypes.DWORD
    k32.WaitForSingleObject.argtypes = (wintypes.HANDLE, wintypes.DWORD)
    k32.CloseHandle.argtypes = (wintypes.HANDLE,)
    k32.QueryFullProcessImageNameW.restype = wintypes.BOOL
    k32.QueryFullProcessImageNameW.argtypes = (wintypes.HANDLE, wintypes.DWORD, wintypes.LPWSTR,
                                               ctypes.POINTER(wintypes.DWORD))
    return k32


def _open_process(pid: int) -> int | None:
    handle = _kernel32().OpenProcess(_SYNCHRONIZE | _PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    return int(handle) if handle else None


def _image_of(handle: int) -> str | None:
    import ctypes
    from ctypes import wintypes
    buf = ctypes.create_unicode_buffer(32768)
    size = wintypes.DWORD(len(buf))
    if not _kernel32().QueryFullProcessImageNameW(handle, 0, buf, ctypes.byref(size)):
        return None
    return buf.value


def _watch_windows(ppid: int, on_gone: Callable[[], None]) -> bool:
    # The handle is opened once and kept: a pid can be reused, a handle cannot.
    handle = _open_process(ppid)
    if handle is None:
        on_gone()  # gone already, between getppid() and here
        return True
    image = _image_of(handle)
    if image is None or os.path.normcase(os.path.realpath(image)) != os.path.normcase(
            os.path.realpath(sys.executable)):
        _kernel32().CloseHandle(handle)  # the pid was reused by another program: nothing to watch
        on_gone()
        return True

    def wait() -> None:
        k32 = _kernel32()
        try:
            if k32.WaitForSingleObject(handle, _INFINITE) == _WAIT_OBJECT_0:
                on_gone()
        finally:
            k32.CloseHandle(handle)

    threading.Thread(target=wait, name="guardproxy-parent-watch", daemon=True).start()
    return True


# --- Linux -----------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _watch_linux(ppid: int) -> bool:
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != ppid:  # it died before the kernel was told: the signal will never come
        os.kill(os.getpid(), signal.SIGTERM)
    return True
