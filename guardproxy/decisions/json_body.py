"""The one JSON grammar request bodies are read with: a strict subset of Go's encoding/json.  Pure.

Ollama reads a body with Go's encoding/json, in two ways at once: its
handlers decode into structs (field names matched case-insensitively, with
Unicode folding, the last duplicate winning, maps and structs *merged*
when repeated), and its cloud proxy looks "model" up exactly in a map.  A
check is only worth something when it reads what both of those read, so
this reader accepts a body only where every reading agrees, and refuses
(400, one line) what they could read differently:

- one JSON object and nothing after it but whitespace (Go's stream decoder
  would ignore trailing data, its Unmarshal would not); UTF-8, no BOM;
- a field the gate reads (FIELDS) appears once at the top level, spelled
  exactly: "Model", "modeſ" (U+017F) or "\\u212aeep_alive" are refused;
- no NaN/Infinity, numbers and strings per RFC 8259, at most MAX_DEPTH deep;
- values of read fields are valid UTF-8 without lone surrogates (Go would
  put U+FFFD where Python keeps the byte or the surrogate).

Cost: one pass, linear in the body.  Members the gate does not read are
skipped without building them (a regular expression consumes each run of
flat members in one call), and the top level holds at most
MAX_TOP_MEMBERS members: Ollama's request types have a few dozen fields,
so a body with thousands of top-level members is refused at once.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..wire.errors import BadRequest

# Every top-level field some check reads, on any route: each must be spelled exactly, once.
FIELDS = frozenset({
    "model", "name", "keep_alive", "options", "tools", "think", "thinking",
    "max_tokens", "max_completion_tokens", "max_output_tokens",
})
MAX_DEPTH = 512            # Go allows 10,000; Python's json far fewer
MAX_TOP_MEMBERS = 1024     # Ollama's request types have about 30 fields
MAX_READ_VALUE = 4 * 1024 * 1024  # a read field (tools, options) is built: bounded
# One regular-expression call scans at most this much (about 10 ms): a check running in a worker
# thread gives the event loop the interpreter back between calls.
RUN_BYTES = 256 * 1024

# Go's struct-field matching folds case (bytes.EqualFold, and since Go 1.21
# ToUpper(ToLower(r))): these non-ASCII letters land on ASCII ones.
_FOLD: dict[int, int | str] = {**{c: c + 32 for c in range(0x41, 0x5B)}, 0x212A: "k", 0x017F: "s", 0x0130: "i",
                               0x0131: "i"}

_WS = rb"[ \t\n\r]*+"
_STR = rb'"(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+"'
_NUM = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?"
_SCALAR = rb"(?:" + _STR + rb"|" + _NUM + rb"|true|false|null)"
_WS_RE = re.compile(_WS)
_SCALAR_RE = re.compile(_SCALAR)
_KEY_RE = re.compile(rb"(" + _STR + rb")" + _WS + rb":" + _WS)
# After a value inside a container: as many further flat members (elements) as follow, in one call.
# One member of the top level in one call: its name, and its value when that is a scalar (else
# _skip walks it); then what follows it: a comma, or the closing brace (group 1).
_MEMBER_RE = re.compile(rb"(" + _STR + rb")" + _WS + rb":" + _WS + rb"(" + _SCALAR + rb")?")
_AFTER_RE = re.compile(_WS + rb"(?:,|(\}))" + _WS)
# A container holding scalars only (the usual `options`, a `stop` list), checked in one call.
_FLAT_OBJ = re.compile(rb"\{" + _WS + rb"(?:" + _STR + _WS + rb":" + _WS + _SCALAR + rb"(?:" + _WS + rb"," + _WS + _STR
                       + _WS + rb":" + _WS + _SCALAR + rb")*+" + _WS + rb")?\}")
_FLAT_ARR = re.compile(rb"\[" + _WS + rb"(?:" + _SCALAR + rb"(?:" + _WS + rb"," + _WS + _SCALAR + rb")*+" + _WS
                       + rb")?\]")
_OBJ_RUN = re.compile(rb"(?:" + _WS + rb"," + _WS + _STR + _WS + rb":" + _WS + _SCALAR + rb")*+" + _WS)
_ARR_RUN = re.compile(rb"(?:" + _WS + rb"," + _WS + _SCALAR + rb")*+" + _WS)
_OPEN = {0x7B: 0x7D, 0x5B: 0x5D}  # opener -> closer


class Malformed(BadRequest):
    message = "request body must be JSON"


def fold(name: str) -> str:
    """A field name as Go's decoder compares it (ASCII case and the four letters that fold onto ASCII)."""
    if name.isascii() and name.islower():
        return name  # (the usual spelling: nothing to fold, and translate's per-letter lookups spared)
    return name.translate(_FOLD)


def _skip(b: bytes | bytearray, pos: int, depth: int) -> int:
    """The end of the JSON value starting at `pos`, checked against the grammar but not built."""
    m = _SCALAR_RE.match(b, pos)
    if m is not None:
        return m.end()
    if depth < MAX_DEPTH:
        flat = _FLAT_OBJ if b[pos:pos + 1] == b"{" else _FLAT_ARR
        m = flat.match(b, pos, min(len(b), pos + RUN_BYTES))
        if m is not None:
            return m.end()
    stack: list[int] = []
    at_value = True
    n = len(b)
    while True:
        if at_value:
            m = _SCALAR_RE.match(b, pos)
            if m is not None:
                pos, at_value = m.end(), False
                continue
            c = b[pos] if pos < n else -1
            if c not in _OPEN:
                raise Malformed()
            if depth + len(stack) >= MAX_DEPTH:
                raise BadRequest(f"request body nests deeper than {MAX_DEPTH} levels")
            stack.append(c)
            pos = _WS_RE.match(b, pos + 1).end()  # type: ignore[union-attr]
            if pos < n and b[pos] == _OPEN[c]:
                stack.pop()
                pos, at_value = pos + 1, False
            elif c == 0x7B:
                m = _KEY_RE.match(b, pos)
                if m is None:
                    raise Malformed()
                pos = m.end()
            continue
        if not stack:
            return pos
        top = stack[-1]
        run = _OBJ_RUN if top == 0x7B else _ARR_RUN
        pos = run.match(b, pos, min(n, pos + RUN_BYTES)).end()  # type: ignore[union-attr]
        c = b[pos] if pos < n else -1
        if c == _OPEN[top]:
            stack.pop()
            pos += 1
        elif c == 0x2C:  # ','
            pos = _WS_RE.match(b, pos + 1).end()  # type: ignore[union-attr]
            if top == 0x7B:
                m = _KEY_RE.match(b, pos)
                if m is None:
                    raise Malformed()
                pos = m.end()
            at_value = True
        else:
            raise Malformed()


def _no_surrogates(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("request body has a lone surrogate escape in a field it checks") from None
    elif isinstance(value, list):
        for v in value:
            _no_surrogates(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(k)
            _no_surrogates(v)


def _go_float(text: str) -> float:
    f = float(text)
    if math.isinf(f):
        raise BadRequest("request body has a number out of range")  # Go: cannot unmarshal into float64
    return f


# Built once: json.loads with hooks would build a decoder (and its scanner) per call.
_DECODERS = (json.JSONDecoder(parse_float=_go_float, parse_int=int),
             json.JSONDecoder(parse_float=_go_float, parse_int=_go_float))


def decode_value(raw: bytes | bytearray, *, go_any: bool = False) -> Any:
    """A read field's value, built, its strings checked for what Go would replace.  `go_any`:
    every number as a float, as Go decodes into `any` (the options map)."""
    if len(raw) > MAX_READ_VALUE:
        raise BadRequest("request body has a checked field larger than 4 MiB")
    try:
        text = raw.decode("utf-8")  # strict: no invalid bytes, no encoded surrogates
    except UnicodeDecodeError:
        raise BadRequest("request body has invalid UTF-8 in a field it checks") from None
    if text[:1] == '"' and "\\" not in text:
        # A string without escapes (the grammar has checked it: no control characters, one quote
        # at each end) is its own text: the usual model name, built without the JSON decoder.
        return text[1:-1]
    try:
        value = _DECODERS[go_any].decode(text)
    except (ValueError, RecursionError):
        raise BadRequest("request body has a number out of range") from None
    if "\\u" in text or "\\U" in text:
        _no_surrogates(value)
    return value


def _key(raw: bytes | bytearray) -> str:
    if 0x5C not in raw:  # (no backslash; an int operand: bytes' `in` with bytes is far slower)
        try:
            return raw[1:-1].decode("utf-8")
        except UnicodeDecodeError:
            return raw[1:-1].decode("utf-8", "replace")  # (cannot fold onto a read field)
    return str(json.loads(raw.decode("utf-8", "replace")))


def read_top(body: bytes | bytearray, fields: frozenset[str] = FIELDS, *, top: bool = True) -> dict[str, bytes | bytearray]:
    """The raw values of the `fields` a JSON object sets (its top level); BadRequest when the body
    is not in the grammar (see the module's docstring).  `top`: `body` is a whole request body
    (else an object inside one, already checked, whose read fields Go matches the same way)."""
    if top and body.startswith(b"\xef\xbb\xbf"):
        raise BadRequest("request body must be JSON without a byte order mark")
    n = len(body)
    pos = _WS_RE.match(body).end()  # type: ignore[union-attr]
    if pos >= n or body[pos] != 0x7B:
        raise BadRequest("request body must be a JSON object")
    found: dict[str, bytes | bytearray] = {}
    pos = _WS_RE.match(body, pos + 1).end()  # type: ignore[union-attr]
    members = 0
    if pos < n and body[pos] == 0x7D:
        pos += 1
    else:
        while True:
            m = _MEMBER_RE.match(body, pos)
            if m is None:
                raise Malformed()
            members += 1
            if members > MAX_TOP_MEMBERS and top:
                raise BadRequest(f"request body has more than {MAX_TOP_MEMBERS} top-level members")
            if m.end(2) >= 0:
                start, end = m.span(2)  # a scalar: matched with its name
            else:
                start = m.end()
                end = _skip(body, start, 1)
            key = _key(m.group(1))
            folded = fold(key)
            if folded in fields:
                if key != folded:
                    raise BadRequest(f"request body spells {folded!r} as {key[:40]!r}: use the exact name")
                if folded in found:
                    raise BadRequest(f"request body sets {folded!r} more than once")
                found[folded] = body[start:end]
            after = _AFTER_RE.match(body, end)
            if after is None:
                raise Malformed()
            pos = after.end()
            if after.end(1) >= 0:  # the closing brace (and the whitespace after it)
                break
    if _WS_RE.match(body, pos).end() != n:  # type: ignore[union-attr]
        raise BadRequest("request body has data after its JSON object")
    return found


def array_items(raw: bytes | bytearray) -> list[bytes | bytearray]:
    """The raw elements of a JSON array (already checked); BadRequest when `raw` is not an array."""
    n = len(raw)
    if not raw.startswith(b"["):
        raise BadRequest("expected a JSON array")
    items: list[bytes | bytearray] = []
    pos = _WS_RE.match(raw, 1).end()  # type: ignore[union-attr]
    if pos < n and raw[pos] == 0x5D:
        return items
    while True:
        end = _skip(raw, pos, 1)
        items.append(raw[pos:end])
        pos = _WS_RE.match(raw, end).end()  # type: ignore[union-attr]
        c = raw[pos] if pos < n else -1
        if c == 0x5D:
            return items
        if c != 0x2C:
            raise Malformed()
        pos = _WS_RE.match(raw, pos + 1).end()  # type: ignore[union-attr]
