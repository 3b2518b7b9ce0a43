"""One finding of `guardproxy doctor`: how bad, what was found, and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.printable import printable

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"


@dataclass(frozen=True)
class Finding:
    level: str
    text: str
    fix: str = ""

    def line(self) -> str:
        """One line: what a host, a file or the system said is in it, so control characters are escaped."""
        return printable(f"{self.level:<4}  {self.text}" + (f" -- fix: {self.fix}" if self.fix else ""))
