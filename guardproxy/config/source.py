"""A config file as its owner saved it: the text, its byte-order mark and its line endings.

Every reader of the config comes through here, so a file saved by Notepad
("UTF-8 with BOM") or Windows PowerShell 5 reads the same everywhere, and the
editing commands can write back exactly the bytes they did not mean to change.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import ConfigError

BOM = "\ufeff"

# A table header as TOML allows it: [name] or [[name]], the name bare or quoted, spaces around it,
# and a comment after it (the template writes `[ban]   # ...`).  Dotted names are not matched.
_TABLE_HEADER = re.compile(r"""[ \t]*\[(\[)?[ \t]*([A-Za-z0-9_-]+|"[^"\\]*"|'[^']*')[ \t]*\](?(1)\])[ \t]*(?:#.*)?""")


def split_lines(text: str) -> list[str]:
    """Lines with their own endings ("\\n" only: str.splitlines also splits inside strings at \\x0c, U+2028...)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def table_header(line: str) -> tuple[str, bool] | None:
    """(name, whether it is an [[array of tables]]) when the line (without its ending) is a table header."""
    m = _TABLE_HEADER.fullmatch(line.rstrip("\r\n"))
    if m is None:
        return None
    name = m.group(2)
    return (name[1:-1] if name[0] in "\"'" else name), m.group(1) is not None


@dataclass(frozen=True)
class ConfigText:
    path: Path
    text: str   # without the byte-order mark; line endings exactly as saved
    bom: bool

    @property
    def newline(self) -> str:
        """The file's own line ending, for lines an edit adds (the first line's decides)."""
        first = self.text.find("\n")
        return "\r\n" if first > 0 and self.text[first - 1] == "\r" else "\n"

    def with_text(self, text: str) -> "ConfigText":
        return ConfigText(self.path, text, self.bom)

    def encoded(self) -> str:
        """The text to write back: the byte-order mark stays if the file had one."""
        return (BOM if self.bom else "") + self.text


def read_config_text(path: Path) -> ConfigText:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: cannot read: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: cannot read: the file is UTF-16 text (what PowerShell's `>` and Out-File "
                          f"write); save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    bom = text.startswith(BOM)
    return ConfigText(path, text[1:] if bom else text, bom)


def parse_toml(source: ConfigText) -> dict[str, Any]:
    try:
        return tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message already ends with "(at line N, column M)".
        raise ConfigError(f"{source.path}: not valid TOML: {e}") from None
