"""A host's model list (/api/tags, /api/ps, /v1/models) read as untrusted input.  Pure logic: no asyncio.

A host can send anything up to the listing cap (8 MiB): 100 KB of `[[[...`, a
hundred thousand entries, one string of megabytes.  `json.loads` on that
recurses once per nesting level and holds the event loop for the whole
parse.  So the body is read here a slice at a time (`step`, whose caller
yields to the loop in between), without recursion, and within bounds: a
nesting depth, a number of entries, a size per entry and per string.  Only
the entries of the one array that matters (`models`, or `data` for
/v1/models) are decoded, each one alone and small; everything else in the
document is only scanned past.

Past any bound, or on malformed JSON, the reader raises ListingError (a
ValueError): the listing is unreadable, and the host's check fails.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32             # nesting levels (Ollama's lists use 5)
MAX_ENTRIES = 4096         # entries in the list (models on one host)
MAX_ENTRY = 64 * 1024      # bytes of one entry (Ollama's are a few hundred)
MAX_STRING = 64 * 1024     # bytes of any one string outside the entries
STEP_TOKENS = 512          # structural tokens scanned per step outside the list (well under a millisecond)
STEP_ENTRIES = 64          # entries decoded per step (well under a millisecond)

_STRUCTURE = re.compile(rb'[\[\]{}"]')
# A whole JSON string (the opening quote included); control characters end it, as JSON allows none.
_STRING = re.compile(rb'"[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*"')
_COLON = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*')
_SPACE = re.compile(rb'[ \t\r\n]*')
_AFTER_ENTRY = re.compile(r'[ \t\r\n]*([,\]])[ \t\r\n]*')  # (on decoded text)
_CLOSER = {ord("}"): ord("{"), ord("]"): ord("[")}
_QUOTE, _OPEN_ARRAY, _OPEN_OBJECT = ord('"'), ord("["), ord("{")
_decode_one = json.JSONDecoder().raw_decode


class ListingError(ValueError):
    """The list is malformed, or over one of the bounds."""


class ListingReader:
    """The object entries of `field` (an array in the top-level object) of a JSON body.

    Drive it with `while not reader.step(): <yield>`; then `entries` holds them.
    As with `json.loads`, a field given twice takes its last value, and an
    element of the list that is not an object is left out (it still counts).
    """

    def __init__(self, body: bytes, field: str = "models") -> None:
        self.body = body
        self.field = field
        self.entries: list[dict[str, Any]] = []
        self._pos = 0
        self._stack = bytearray()          # the open brackets, outside the list's entries
        self._in_field = False             # between the entries of the field's array
        self._found = False                # the field has been seen (as a list)
        self._current: list[dict[str, Any]] = []
        self._count = 0
        self._done = False
        self._text: str | None = None      # the window of the body being decoded (in the list)
        self._ascii = True
        self._base = 0                     # the window's byte offset
        self._i = 0                        # where in the window the next entry begins
        self._to_end = False               # the window reaches the end of the body
        start = _space_end(body, 0)
        if start >= len(body) or body[start] != _OPEN_OBJECT:
            raise ListingError("not a JSON object")

    def step(self) -> bool:
        """Do one slice of the work; True when the entries are all read."""
        if self._in_field:
            self._entries(STEP_ENTRIES)
        else:
            self._scan(STEP_TOKENS)
        if self._done and not self._found:
            raise ListingError(f"no {self.field} list")
        return self._done

    def read_all(self) -> list[dict[str, Any]]:
        """Every step at once (for small bodies, and for tests)."""
        while not self.step():
            pass
        return self.entries

    def _scan(self, budget: int) -> None:
        """Scan past what is not the list: brackets and strings, no values decoded."""
        body, stack, n = self.body, self._stack, len(self.body)
        pos = self._pos
        find = _STRUCTURE.search
        for _ in range(budget):
            m = find(body, pos)
            if m is None:
                raise ListingError("unexpected end of the document")
            at = m.start()
            c = body[at]
            if c == _QUOTE:
                s = _STRING.match(body, at, min(n, at + MAX_STRING + 2))
                if s is None:
                    raise ListingError("a string is malformed or too long")
                pos = s.end()
                if len(stack) == 1:
                    colon = _COLON.match(body, pos)
                    if colon is not None:  # (a key, not a value)
                        pos = self._top_key(body[at:pos], colon.end())
                        if self._in_field:
                            self._pos = pos
                            return
                continue
            pos = at + 1
            if c == _OPEN_ARRAY or c == _OPEN_OBJECT:
                stack.append(c)
                if len(stack) > MAX_DEPTH:
                    raise ListingError("nested too deeply")
                continue
            if not stack or stack.pop() != _CLOSER[c]:
                raise ListingError("mismatched brackets")
            if not stack:
                if _space_end(body, pos) != n:
                    raise ListingError("data after the document")
                self._done = True
                break
        self._pos = pos

    def _top_key(self, token: bytes, value_at: int) -> int:
        """A key of the top-level object; where to go on scanning."""
        try:
            key = json.loads(token)
        except ValueError:
            raise ListingError("a malformed key") from None
        if key != self.field:
            return value_at
        if value_at >= len(self.body) or self.body[value_at] != _OPEN_ARRAY:
            raise ListingError(f"{self.field} is not a list")
        self._in_field = True
        self._current = []
        self._count = 0
        return _space_end(self.body, value_at + 1)

    def _entries(self, budget: int) -> None:
        """Decode the list's next entries, each alone, from a window of the body decoded at once."""
        if self._text is None:
            self._window(self._pos)
            if self._text is not None and self._text.startswith("]"):
                self._close(1)
                return
        for _ in range(budget):
            text, i = self._text, self._i
            assert text is not None
            try:
                entry, end = _decode_one(text, i)
            except RecursionError:
                raise ListingError("nested too deeply") from None
            except ValueError as exc:
                entry, end, error = None, -1, str(exc)
            after = _AFTER_ENTRY.match(text, end) if end >= 0 else None
            if (after is None or after.end() == len(text)) and not self._to_end and i > 0:
                self._window(self._byte_at(i))  # the entry runs past the window: read it from its start
                continue
            if end < 0:
                raise ListingError(f"a malformed or too large entry: {error}")
            if after is None:
                raise ListingError("malformed list")
            if end - i > MAX_ENTRY:
                raise ListingError("an entry is too large")
            # (fewer brackets than the depth bound: it cannot be too deep, and needs no walk)
            if text.count("{", i, end) + text.count("[", i, end) > MAX_DEPTH - 2 and not _shallow(entry):
                raise ListingError("nested too deeply")
            self._count += 1
            if self._count > MAX_ENTRIES:
                raise ListingError(f"more than {MAX_ENTRIES} entries")
            if type(entry) is dict:
                self._current.append(entry)
            self._i = after.end()
            if after.group(1) == "]":
                self._close(self._i)
                return

    def _window(self, at: int) -> None:
        """Decode the body from byte `at`, up to twice the largest entry."""
        piece = self.body[at:at + 2 * MAX_ENTRY]
        self._ascii = piece.isascii()
        self._text = piece.decode("ascii") if self._ascii else piece.decode("utf-8", "surrogateescape")
        self._base, self._i = at, 0
        self._to_end = at + len(piece) >= len(self.body)

    def _byte_at(self, i: int) -> int:
        assert self._text is not None
        return self._base + (i if self._ascii else len(self._text[:i].encode("utf-8", "surrogateescape")))

    def _close(self, i: int) -> None:
        """The list has ended just before text index `i`: back to scanning the document."""
        self._pos = self._byte_at(i)
        self._text = None
        self._in_field = False
        self._found = True
        self.entries = self._current


def _space_end(body: bytes, pos: int) -> int:
    """Where the whitespace from `pos` ends."""
    m = _SPACE.match(body, pos)
    return m.end() if m is not None else pos


def _shallow(value: Any) -> bool:
    """The value nests at most MAX_DEPTH - 2 levels (it sits two levels down); no recursion."""
    todo = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if type(v) is dict:
            items: Any = v.values()
        elif type(v) is list:
            items = v
        else:
            continue
        if depth > MAX_DEPTH - 2:
            return False
        todo.extend((x, depth + 1) for x in items if type(x) is dict or type(x) is list)
    return True


def read_listing(body: bytes, field: str = "models") -> list[dict[str, Any]]:
    """The entries of a listing in one go (for what is small)."""
    return ListingReader(body, field).read_all()
