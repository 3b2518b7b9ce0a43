"""A JSON object's members with the text each was written as, so one field can be set and every
other member forwarded exactly as the client wrote it.  Pure logic: no asyncio.

Go's encoding/json matches a struct field's name in any letter case (with
Unicode folding) and the last match wins, and it merges a repeated object
field into one map or struct.  `set` therefore removes every member that Go
would read as the field and writes the new value once, so what Ollama reads
is the value set here, whatever spellings the body held.
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple

from ..wire.errors import BadRequest

_WS = " \t\n\r"


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON, and Go refuses them


_DECODER = json.JSONDecoder(object_pairs_hook=lambda pairs: pairs, parse_constant=_no_constant)
_scan_string: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def fold(name: str) -> str:
    """A field name as Go compares it (bytes.EqualFold over what ASCII field names can match)."""
    if not name.isascii():
        # The only non-ASCII letters that fold onto ASCII ones: KELVIN SIGN and LONG S.
        name = name.replace("\u212a", "k").replace("\u017f", "s")
    return name.lower()


class Member(NamedTuple):
    key: str
    value: Any         # objects as lists of (name, value) pairs, repeats kept
    start: int         # where the member's name starts in the text
    value_start: int
    end: int           # just past its value


def _skip(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


class JsonObject:
    """The members of the object at `start` of `text` (BadRequest when it is not one)."""

    def __init__(self, text: str, start: int = 0) -> None:
        self.text = text
        i = _skip(text, start)
        if i >= len(text) or text[i] != "{":
            raise BadRequest("request body must be a JSON object")
        self.start = i
        self.members: list[Member] = []
        self._set: dict[str, tuple[str, str, bool]] = {}  # matched name -> (name to write, raw value, folded)
        try:
            i = _skip(text, i + 1)
            if text[i] == "}":
                self.end = i + 1
                return
            while True:
                if text[i] != '"':
                    raise ValueError("name expected")
                key, after = _scan_string(text, i + 1, True)
                j = _skip(text, after)
                if text[j] != ":":
                    raise ValueError("colon expected")
                vstart = _skip(text, j + 1)
                value, vend = _DECODER.raw_decode(text, vstart)
                self.members.append(Member(key, value, i, vstart, vend))
                i = _skip(text, vend)
                if text[i] == "}":
                    self.end = i + 1
                    return
                if text[i] != ",":
                    raise ValueError("comma expected")
                i = _skip(text, i + 1)
        except (ValueError, IndexError, RecursionError):
            raise BadRequest("request body must be JSON") from None

    def named(self, field: str, *, folded: bool = True) -> list[Member]:
        """The members Go reads as `field` (any case when `folded`, as for a struct field; exact for a map key)."""
        return [m for m in self.members if (fold(m.key) == field if folded else m.key == field)]

    def last(self, field: str, *, folded: bool = True) -> Any:
        """The value Go ends up with for a scalar field (None when absent)."""
        found = self.named(field, folded=folded)
        return found[-1].value if found else None

    def set(self, field: str, raw_value: str, *, folded: bool = True) -> None:
        """Write `field` once with this JSON text, in place of every member Go would read as it."""
        self._set[field] = (field, raw_value, folded)

    @property
    def changed(self) -> bool:
        return bool(self._set)

    def render(self) -> str:
        """The object's text: untouched members as written, each set field once where its last copy was."""
        if not self._set:
            return self.text[self.start:self.end]
        last_at: dict[str, int] = {}
        for idx, m in enumerate(self.members):
            for name, (_, _, folded) in self._set.items():
                if (fold(m.key) == name if folded else m.key == name):
                    last_at[name] = idx
        by_index = {idx: name for name, idx in last_at.items()}
        matched = set(last_at)
        out: list[str] = []
        for idx, m in enumerate(self.members):
            if idx in by_index:
                out.append(_member(*self._set[by_index[idx]][:2]))
            elif not any((fold(m.key) == n if f else m.key == n) for n, (_, _, f) in self._set.items()):
                out.append(self.text[m.start:m.end])
        out += [_member(*self._set[n][:2]) for n in self._set if n not in matched]
        return "{" + ",".join(out) + "}"

    def document(self) -> str:
        """The whole text with this (top-level) object rendered again; what surrounds it is kept."""
        return self.text[:self.start] + self.render() + self.text[self.end:]


def _member(name: str, raw_value: str) -> str:
    return json.dumps(name) + ":" + raw_value


class MergedObject:
    """What Go makes of every member read as one object field (a map, or a struct behind a pointer):
    the objects merged in order, a later name replacing an earlier one, null starting again (a null
    inside a struct changes nothing; inside a map it is a value).

    Each inner member keeps its text; `render` writes the merged object with the changes.
    """

    def __init__(self, outer: JsonObject, field: str, *, folded_inner: bool) -> None:
        self.outer, self.field, self.folded_inner = outer, field, folded_inner
        self.present = False
        self.values: dict[str, Any] = {}
        self._raw: dict[str, str] = {}
        self._changes: dict[str, str] = {}
        for m in outer.named(field):
            if m.value is None:
                self.values, self._raw = {}, {}  # null: Go drops what it had
                continue
            if not isinstance(m.value, list):
                raise BadRequest(f"{field} must be a JSON object")
            self.present = True
            inner = JsonObject(outer.text, m.value_start)
            for im in inner.members:
                if im.value is None and folded_inner:
                    continue  # null into a struct's (non-pointer) field leaves it as it was
                name = fold(im.key) if folded_inner else im.key
                self.values[name] = im.value
                self._raw[name] = outer.text[im.start:im.end]

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def set(self, name: str, raw_value: str) -> None:
        self._changes[name] = raw_value
        self._raw[name] = _member(name, raw_value)

    def apply(self) -> None:
        """Put the merged object, with its changes, in the outer object (once, whatever was sent)."""
        if self._changes:
            self.outer.set(self.field, "{" + ",".join(self._raw.values()) + "}")
