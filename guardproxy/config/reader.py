"""Reading a config table field by field: each value checked, each mistake a ConfigError naming
the file, the line (when it can be found) and the field."""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar, overload

from .model import ConfigError, Rate
from .source import split_lines, table_header
from .values import parse_duration, parse_rate

T = TypeVar("T")


class Reader:
    """Validation helpers that know the file, so every error names it."""

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self.lines = split_lines(text)

    def fail(self, where: tuple[Any, ...], expected: str) -> ConfigError:
        return ConfigError(f"{self.location(where)}: {_dotted(where)}: expected {expected}")

    def location(self, where: tuple[Any, ...]) -> str:
        """"file:line" of a field or table (just "file" when its line cannot be found)."""
        name = str(self.path) if self.path else "<config>"
        line = self._locate(where)
        return f"{name}:{line}" if line else name

    def _locate(self, where: tuple[Any, ...]) -> int | None:
        """Best-effort line number of a field, so a user can jump to it."""
        table: tuple[Any, ...] = ()
        counts: dict[str, int] = {}
        target_table = tuple(where[:-1])
        leaf = where[-1] if where else None
        table_line = None
        for i, raw in enumerate(self.lines, 1):
            s = raw.strip()
            if s.startswith("["):
                header = table_header(raw)
                if header is None:
                    table = (None,)  # a header this search cannot read: nothing under it is placed
                elif header[1]:
                    counts[header[0]] = counts.get(header[0], -1) + 1
                    table = (header[0], counts[header[0]])
                else:
                    table = (header[0],)
            else:
                m = re.match(r'^["\']?([A-Za-z0-9_\-]+)["\']?\s*=', s)
                if m and table == target_table and m.group(1) == leaf:
                    return i
                continue
            if table == tuple(where):
                table_line = i
        return table_line

    def table(self, obj: Any, where: tuple[Any, ...], allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(where, "a table")
        for k in obj:
            if k not in allowed:
                raise self.fail(where + (k,), f"one of the known fields ({', '.join(sorted(allowed))}); "
                                               f"unknown field")
        return obj

    def string(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], default: str | None = None) -> str:
        v = obj.get(key, default)
        if not isinstance(v, str):
            raise self.fail(where + (key,), "a string")
        return v

    @overload
    def integer(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], default: int,
                minimum: int = 0) -> int: ...

    @overload
    def integer(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], default: None,
                minimum: int = 0) -> int | None: ...

    def integer(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], default: int | None,
                minimum: int = 0) -> int | None:
        """A whole number >= minimum; None only when absent with no default (TOML has no null)."""
        v = obj.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(where + (key,), f"a whole number >= {minimum}")
        return v

    def flag(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...]) -> bool:
        v = obj.get(key, False)
        if not isinstance(v, bool):
            raise self.fail(where + (key,), "true or false")
        return v

    def duration(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], default: float) -> float:
        try:
            return parse_duration(obj.get(key, default))
        except ValueError as e:
            raise self.fail(where + (key,), str(e)) from None

    def date(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], example: str) -> date | None:
        """A TOML date (a date-time counts as its day), or None when absent."""
        v = obj.get(key)
        if isinstance(v, datetime):
            return v.date()
        if v is not None and not isinstance(v, date):
            raise self.fail(where + (key,), f"a date like {example} (no quotes)")
        return v

    def optional(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...], parse: Callable[[Any], T]) -> T | None:
        """A field read by `parse` (a parser of values.py), or None when it is absent."""
        if key not in obj:
            return None
        try:
            return parse(obj[key])
        except ValueError as e:
            raise self.fail(where + (key,), str(e)) from None

    def rate(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...]) -> Rate | None:
        return self.optional(obj, key, where, parse_rate)

    def strings(self, obj: Mapping[str, Any], key: str, where: tuple[Any, ...]) -> tuple[str, ...] | None:
        if key not in obj:
            return None
        v = obj[key]
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise self.fail(where + (key,), "an array of non-empty strings, e.g. [\"a\", \"b\"]")
        return tuple(x.strip() for x in v)


def _dotted(where: tuple[Any, ...]) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"
