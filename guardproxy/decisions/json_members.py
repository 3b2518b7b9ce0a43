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
import re
from typing import Any, Callable, NamedTuple

from ..wire.errors import BadRequest


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON, and Go refuses them


_DECODER = json.JSONDecoder(object_pairs_hook=lambda pairs: pairs, parse_constant=_no_constant)
_scan_string: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]

# More members in one object than any Ollama request has: refused, so the work per body stays small.
MAX_MEMBERS = 1024
MAX_DEPTH = 10000  # Go's encoding/json refuses deeper nesting

# A value that is not read is skipped by regular expressions (C speed, nothing built): a string, a
# scalar, or brackets nested up to SHALLOW_DEPTH deep in one match; deeper ones a level at a time.
# Brackets pair by depth only ("{" may close with "]"): what is inside is not validated here, the
# body goes on with it, and Go refuses what is not JSON.
SHALLOW_DEPTH = 32
_STR = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_STRING = re.compile(_STR)
_SCALAR = re.compile(r"[-+.0-9A-Za-z]++")
_TO_NEXT = re.compile(r'[^"{}\[\]]*+')
_ATOM = r'[^"{}\[\]]++|' + _STR
_nested = r"[{\[](?:" + _ATOM + r")*+[}\]]"
for _ in range(SHALLOW_DEPTH - 1):
    _nested = r"[{\[](?:" + _ATOM + "|" + _nested + r")*+[}\]]"
_SHALLOW = re.compile(_nested)
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    return _SPACE.match(text, i).end()  # type: ignore[union-attr]  # (`*` always matches)


def skip_value(text: str, i: int) -> int:
    """The end of the JSON value at `i` (ValueError or IndexError when there is none)."""
    c = text[i]
    if c == '"':
        m = _STRING.match(text, i)
    elif c in "{[":
        m = _SHALLOW.match(text, i)
        if m is None:
            return _skip_deep(text, i)
    else:
        m = _SCALAR.match(text, i)
    if m is None:
        raise ValueError("value expected")
    return m.end()


def _skip_deep(text: str, i: int) -> int:
    depth = 0
    while True:
        c = text[i]
        if c in "{[":
            m = _SHALLOW.match(text, i) if depth else None
            if m is not None:
                i = m.end()
                continue
            depth += 1
            if depth > MAX_DEPTH:
                raise BadRequest("request body nests too deep")
            i += 1
        elif c in "}]":
            depth -= 1
            i += 1
            if depth == 0:
                return i
        elif c == '"':
            m = _STRING.match(text, i)
            if m is None:
                raise ValueError("unterminated string")
            i = m.end()
        else:
            i = _TO_NEXT.match(text, i).end()  # type: ignore[union-attr]


def fold(name: str) -> str:
    """A field name as Go compares it (bytes.EqualFold over what ASCII field names can match)."""
    if not name.isascii():
        # The only non-ASCII letters that fold onto ASCII ones: KELVIN SIGN and LONG S.
        name = name.replace("\u212a", "k").replace("\u017f", "s")
    return name.lower()


class _Skipped:
    """The value of a member that was not read (see JsonObject's `wanted`)."""

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED: Any = _Skipped()


class Member(NamedTuple):
    key: str
    value: Any         # objects as lists of (name, value) pairs, repeats kept; SKIPPED when not read
    start: int         # where the member's name starts in the text
    value_start: int
    end: int           # just past its value


def array_items(text: str, start: int, limit: int) -> list[int]:
    """Where each item of the JSON array at `start` begins (BadRequest past `limit` items)."""
    items: list[int] = []
    try:
        i = _skip(text, start + 1)
        if text[i] == "]":
            return items
        while True:
            items.append(i)
            if len(items) > limit:
                raise BadRequest(f"request body has an array of more than {limit} items where few are expected")
            i = _skip(text, skip_value(text, i))
            if text[i] == "]":
                return items
            if text[i] != ",":
                raise ValueError("comma expected")
            i = _skip(text, i + 1)
    except (ValueError, IndexError):
        raise BadRequest("request body must be JSON") from None


class JsonObject:
    """The members of the object at `start` of `text` (BadRequest when it is not one).

    Only the values of members whose names `wanted` accepts (folded as Go folds them, or exact with
    `exact`) are decoded; the others are skipped over, so a large body costs little.
    """

    def __init__(self, text: str, start: int = 0, wanted: frozenset[str] = frozenset(), *,
                 exact: bool = False) -> None:
        self.text = text
        i = _skip(text, start)
        if i >= len(text) or text[i] != "{":
            raise BadRequest("request body must be a JSON object")
        self.start = i
        self.members: list[Member] = []
        self._set: dict[str, tuple[str, str, bool]] = {}  # matched name -> (name to write, raw value, folded)
        members = self.members
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
                if (key if exact else fold(key)) in wanted:
                    value, vend = _DECODER.raw_decode(text, vstart)
                else:
                    value, vend = SKIPPED, skip_value(text, vstart)
                members.append(Member(key, value, i, vstart, vend))
                if len(members) > MAX_MEMBERS:
                    raise BadRequest(f"request body has an object of more than {MAX_MEMBERS} members")
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

    def __init__(self, outer: JsonObject, field: str, wanted: frozenset[str], *, folded_inner: bool) -> None:
        """`wanted`: the inner names whose values are read (folded, or exact for a map)."""
        self.outer, self.field, self.folded_inner = outer, field, folded_inner
        self.values: dict[str, Any] = {}  # by name (folded for a struct); SKIPPED when not read
        self._raw: dict[str, str] = {}
        self._changes: dict[str, str] = {}
        text = outer.text
        for m in outer.named(field):
            if text.startswith("null", m.value_start):
                self.values, self._raw = {}, {}  # null: Go drops what it had
                continue
            if text[m.value_start] != "{":
                raise BadRequest(f"{field} must be a JSON object")
            inner = JsonObject(text, m.value_start, wanted, exact=not folded_inner)
            for im in inner.members:
                if folded_inner and text.startswith("null", im.value_start):
                    continue  # null into a struct's (non-pointer) field leaves it as it was
                name = fold(im.key) if folded_inner else im.key
                self.values[name] = im.value
                self._raw[name] = text[im.start:im.end]

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def set(self, name: str, raw_value: str) -> None:
        self._changes[name] = raw_value
        self._raw[name] = _member(name, raw_value)

    def apply(self) -> None:
        """Put the merged object, with its changes, in the outer object (once, whatever was sent)."""
        if self._changes:
            self.outer.set(self.field, "{" + ",".join(self._raw.values()) + "}")
