"""engine/allocator.py: after tuning, large short-lived buffers stop faulting their pages in each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from guardproxy.engine import allocator

# A child process, so the tuning (process-wide) does not leak into the test run. It allocates and
# frees 256 KiB reads, as a bulk response does, and prints the minor page faults that cost.
CHILD = """
import resource, sys
from guardproxy.engine.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    bytes(262144)
before = faults()
for _ in range(100):
    a = bytearray(262144); b = bytes(a); del a, b
print(tuned, faults() - before)
"""


def run(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_tuned_reads_keep_their_pages() -> None:
    tuned, after = run("tuned")
    if not tuned:
        pytest.skip("not glibc: nothing to tune")
    _, before = run("default")
    assert before > 1000, before       # glibc's defaults: each 256 KiB block faults its pages in again
    assert after * 20 < before, after  # tuned: the freed pages are reused


def test_an_operators_glibc_tunables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert allocator.keep_freed_memory() is False
