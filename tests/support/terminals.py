"""Pseudo-terminals for a child process: one of a given size, and what the child draws on it, read with a deadline."""

from __future__ import annotations

import asyncio
import os
from typing import Callable


def open_terminal(rows: int, columns: int) -> tuple[int, int]:
    """(master, slave) of a new pseudo-terminal `columns` wide; the master does not block (POSIX only)."""
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    os.set_blocking(master, False)
    return master, slave


async def read_until(fd: int, done: Callable[[bytes], bool], deadline: float) -> bytes:
    """Read a pty master until `done(bytes so far)` is true, the child closes it, or the deadline passes."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        while not done(bytes(buf)) and loop.time() < deadline:
            try:
                await asyncio.wait_for(ready.wait(), deadline - loop.time())
            except TimeoutError:
                break
            ready.clear()
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: every copy of the slave side is closed
                break
            if not chunk:
                break
            buf += chunk
    finally:
        loop.remove_reader(fd)
    return bytes(buf)
