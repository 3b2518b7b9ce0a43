"""One finding of `guardproxy doctor`: how bad, what was found, and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"


@dataclass(frozen=True)
class Finding:
    level: str
    text: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:<4}  {self.text}" + (f" -- fix: {self.fix}" if self.fix else "")
