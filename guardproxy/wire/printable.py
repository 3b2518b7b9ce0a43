"""Text that came from outside (model names, key names, addresses, label values), made safe to print.

A model name is whatever a client or an upstream sends: `\\x1b]2;PWNED\\x07\\x1b[2J` in a table would
retitle and clear the operator's terminal.  Every report, table and /metrics label value goes
through `printable`, which writes each control character as a visible escape: C0 (including tab
and newline), DEL, C1, and the Unicode controls that reorder or split what a line shows (bidi
overrides and isolates, line and paragraph separators).  Everything else is left as it is.
"""

from __future__ import annotations

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_FORMAT = [*range(0x200E, 0x2010), *range(0x2028, 0x202F), *range(0x2066, 0x206A)]  # marks, separators, bidi
_ESCAPES: dict[int, str] = {
    **{c: _NAMED.get(chr(c), f"\\x{c:02x}") for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]},
    **{c: f"\\u{c:04x}" for c in _FORMAT},
}


def printable(text: str) -> str:
    """`text` with every control character written as an escape such as \\x1b or \\u202e."""
    return text.translate(_ESCAPES) if not text.isprintable() else text
