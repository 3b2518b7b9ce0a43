"""glibc's allocator, told to keep the memory a proxy frees and soon needs again.

A bulk response arrives in reads of up to 256 KiB. With glibc's defaults, a block
that large is either mapped and unmapped around each read (above the dynamic mmap
threshold) or handed back to the kernel by a heap trim once freed: either way the
next read faults its pages in again, about 90 minor page faults per 1 MiB response,
a fifth of the CPU the gate spends on it (benchmarks: bulk 1 MiB replies). Fixing
the mmap threshold at 4 MiB and trimming only past 16 MiB of free heap keeps those
pages: 0 faults per response afterwards, for at most 16 MiB held after a burst.

Linux with glibc only; elsewhere (musl, macOS, Windows) nothing changes. A
GLIBC_TUNABLES setting of glibc.malloc.* in the environment wins: an operator's own
choice is not overridden.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1   # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for large short-lived reads; True when it took effect."""
    if not sys.platform.startswith("linux") or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only: musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
