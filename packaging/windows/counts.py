"""The Windows test run's counts, from pytest's JUnit XML files (and the skip reasons, from its -rs lines).

    python3 packaging/windows/counts.py A.xml B.xml -- A.log B.log
"""

from __future__ import annotations

import collections
import re
import sys
import xml.etree.ElementTree as ET


def main(args: list[str]) -> int:
    split = args.index("--") if "--" in args else len(args)
    junits, logs = args[:split], args[split + 1:]
    counts = collections.Counter[str]()
    for junit in junits:
        try:
            root = ET.parse(junit).getroot()
        except (OSError, ET.ParseError):
            print(f"Windows CPython tests: no results in {junit} (the run did not finish)")
            counts["errors"] += 1
            continue
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        assert suite is not None
        for k in ("tests", "failures", "errors", "skipped"):
            counts[k] += int(suite.get(k, "0"))
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    print(f"Windows CPython tests: {passed} passed, {counts['skipped']} skipped, {counts['failures']} failed, "
          f"{counts['errors']} errors ({counts['tests']} collected)")
    reasons: collections.Counter[str] = collections.Counter()
    text = ""
    for log in logs:
        try:
            text += open(log, encoding="utf-8", errors="replace").read()
        except OSError:
            pass
    for m in re.finditer(r"^SKIPPED \[(\d+)\] [^:]+(?::\d+)?: (.*)$", text, re.MULTILINE):
        reasons[m.group(2).strip()] += int(m.group(1))
    for reason, n in reasons.most_common():
        print(f"  skipped {n:4d}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
