"""Zero-copy bodies: a long Content-Length response moved with os.splice through a pipe.

For a body of known length on Linux, over plain TCP on both sides, the bytes
go from the upstream socket into a pipe and from the pipe into the client
socket inside the kernel: no `bytes` object per read, no copy into a write
buffer.  The upstream transport stops reading meanwhile (so the event loop
does not race us for its bytes) and the two sockets are watched through
duplicated descriptors, which the event loop accepts beside a transport's own.
Backpressure is the kernel's: a full client socket leaves the pipe full, and
then the upstream is not read, so its TCP window closes.

Everything else (TLS, chunked or close-delimited bodies, Windows, a client
whose transport still holds unsent bytes) takes the ordinary path of relay.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from typing import Any, Callable

# Worth the set-up (a pipe, two descriptors, registrations) only for long bodies.
SPLICE_MIN = 256 * 1024
PIPE_SIZE = 1024 * 1024
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice")
_F_SETPIPE_SZ = 1031
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def socket_fd(transport: Any) -> int | None:
    """The plain TCP socket under a transport, or None (TLS, a test double, no socket)."""
    # (uvloop's transports are not asyncio.Transport subclasses: look at what they offer.)
    get = getattr(transport, "get_extra_info", None)
    if get is None or get("sslcontext") is not None or get("ssl_object") is not None:
        return None
    sock = get("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        return int(sock.fileno())
    except (OSError, ValueError):
        return None


class Splice:
    """Moves `count` bytes from one socket to another in the kernel, then calls `done`.

    `progress(n)` is told of every n bytes delivered to the client;
    `failed(exc, client_side)` ends it on an error of either socket.
    """

    __slots__ = ("loop", "src", "dst", "pipe_r", "pipe_w", "left", "in_pipe", "_reading", "_writing",
                 "progress", "done", "failed", "closed", "blocked_since")

    moved_total = 0  # bytes moved by every splice of this process (for tests and metrics)

    def __init__(self, loop: asyncio.AbstractEventLoop, src_fd: int, dst_fd: int, count: int,
                 progress: Callable[[int], None], done: Callable[[], None],
                 failed: Callable[[BaseException, bool], None]) -> None:
        self.loop = loop
        taken: list[int] = []
        try:
            taken.append(os.dup(src_fd))
            taken.append(os.dup(dst_fd))
            taken.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            for fd in taken:  # (out of descriptors, say: none may stay open behind the caller's back)
                os.close(fd)
            raise
        self.src, self.dst, self.pipe_r, self.pipe_w = taken
        try:
            import fcntl
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default 64 KiB pipe works too, in more steps
        self.left = count
        self.in_pipe = 0
        self._reading = False
        self._writing = False
        self.progress = progress
        self.done = done
        self.failed = failed
        self.closed = False
        self.blocked_since = 0.0  # loop time the client socket became full; 0 while it takes bytes

    def start(self) -> None:
        self.pump()

    def pump(self) -> None:
        """Move what can move now; wait for the socket that blocks."""
        src, dst, pr, pw = self.src, self.dst, self.pipe_r, self.pipe_w
        while not self.closed:
            if not self.in_pipe:
                if not self.left:
                    self.close()
                    self.done()
                    return
                try:
                    n = os.splice(src, pw, min(self.left, PIPE_SIZE), flags=_FLAGS)
                except BlockingIOError:
                    self._wait(read=True)
                    return
                except OSError as exc:
                    self._fail(exc, client_side=False)
                    return
                if not n:
                    self._fail(ConnectionResetError(errno.ECONNRESET, "upstream closed mid-body"), client_side=False)
                    return
                self.in_pipe = n
                self.left -= n
            try:
                m = os.splice(pr, dst, self.in_pipe, flags=_FLAGS)
            except BlockingIOError:
                if not self.blocked_since:
                    self.blocked_since = self.loop.time()
                self._wait(read=False)
                return
            except OSError as exc:
                self._fail(exc, client_side=True)
                return
            self.in_pipe -= m
            self.blocked_since = 0.0
            Splice.moved_total += m
            self.progress(m)

    def _wait(self, *, read: bool) -> None:
        if read and not self._reading:
            if self._writing:
                self.loop.remove_writer(self.dst)
                self._writing = False
            self.loop.add_reader(self.src, self.pump)
            self._reading = True
        elif not read and not self._writing:
            if self._reading:
                self.loop.remove_reader(self.src)
                self._reading = False
            self.loop.add_writer(self.dst, self.pump)
            self._writing = True

    def _fail(self, exc: BaseException, client_side: bool) -> None:
        self.close()
        self.failed(exc, client_side)

    def close(self) -> None:
        """Stop, and give every descriptor back; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._reading:
            self.loop.remove_reader(self.src)
        if self._writing:
            self.loop.remove_writer(self.dst)
        for fd in (self.src, self.dst, self.pipe_r, self.pipe_w):
            try:
                os.close(fd)
            except OSError:
                pass
