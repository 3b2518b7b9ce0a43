"""The Windows test run's counts, from pytest's JUnit XML (and its skip reasons, from its -rs lines).

    python3 packaging/windows/counts.py build/windows/junit.xml build/windows/tests.log
"""

from __future__ import annotations

import collections
import re
import sys
import xml.etree.ElementTree as ET


def main(junit: str, log: str) -> int:
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    total, failed, errors, skipped = (int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped"))
    passed = total - failed - errors - skipped
    print(f"Windows CPython tests: {passed} passed, {skipped} skipped, {failed} failed, {errors} errors "
          f"({total} collected, {float(suite.get('time', '0')):.0f}s)")
    reasons: collections.Counter[str] = collections.Counter()
    try:
        text = open(log, encoding="utf-8", errors="replace").read()
    except OSError:
        text = ""
    for m in re.finditer(r"^SKIPPED \[(\d+)\] [^:]+(?::\d+)?: (.*)$", text, re.MULTILINE):
        reasons[m.group(2).strip()] += int(m.group(1))
    for reason, n in reasons.most_common():
        print(f"  skipped {n:4d}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
