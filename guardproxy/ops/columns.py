"""Text tables for the commands' reports: aligned columns, cut to a width when there is one."""

from __future__ import annotations

from typing import Sequence

from ..wire.printable import printable


def fit(text: str, width: int) -> str:
    """Cut to `width` characters, marking the cut with "~" (control characters escaped first)."""
    text = printable(text)
    if len(text) <= width:
        return text
    return text[:width - 1] + "~" if width >= 2 else text[:max(width, 0)]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int,
          width: int | None = None) -> list[str]:
    """Aligned columns, the first `text_columns` left-aligned, the numbers right-aligned.  When the
    width is short, text columns give first (widest first, down to 8 characters), then the
    numbers' headers, then text down to 3 characters and to 1; what is still too wide is cut.
    No width: as wide as the cells (a report that is piped or printed)."""
    gap = 2
    headers = [printable(h) for h in headers]
    rows = [[printable(c) for c in r] for r in rows]  # names from logs, hosts and clients: no terminal control
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    data = [max([1, *(len(r[i]) for r in rows)]) for i in range(len(headers))]
    width = sum(widths) + gap * (len(widths) - 1) if width is None else width
    floors = ([min(w, 8) if i < text_columns else w for i, w in enumerate(widths)],
              [min(w, 8) if i < text_columns else data[i] for i, w in enumerate(widths)],
              [min(w, 3) if i < text_columns else data[i] for i, w in enumerate(widths)],
              [1 if i < text_columns else data[i] for i in range(len(widths))])
    for floor in floors:
        while sum(widths) + gap * (len(widths) - 1) > width:
            shrinkable = [i for i in range(len(widths)) if widths[i] > floor[i]]
            if not shrinkable:
                break
            widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    lines = []
    for cells in [list(headers), *rows]:
        parts = [fit(c, w).ljust(w) if i < text_columns else fit(c, w).rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        lines.append((" " * gap).join(parts).rstrip())
    return lines
