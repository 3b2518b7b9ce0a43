"""What a JSON request body asks of Ollama, read as Ollama's Go types read it.  Pure.

One `Reading` per body: the model, keep_alive in nanoseconds, the output
caps of the route's dialect, the options map and the tools' types.  Every
check takes its values from here, and the differential tests compare it
field by field with what Go's encoding/json makes of the same bytes
(tests/go_reader), so a check can never act on a value Ollama does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..wire.errors import BadRequest
from . import routes
from .json_body import array_items, decode_value, read_top

FOREVER = 2**63 - 1
MAX_NAME_FIELD = 4096  # bytes of a model's JSON string: far beyond any name Ollama takes (models.MAX_MODEL_NAME)  # keep_alive: a negative duration, which Ollama turns into math.MaxInt64
_INT64 = 2**63

# The output caps each dialect has (dotted: inside an object).
CAPS: dict[str, tuple[str, ...]] = {
    routes.OLLAMA: ("options.num_predict",),
    routes.OPENAI: ("max_tokens", "max_completion_tokens"),
    routes.RESPONSES: ("max_output_tokens",),
    routes.ANTHROPIC: ("max_tokens", "thinking.budget_tokens"),
}
# Which request types have a tools list (the options map: Route.options).
TOOLS_ROUTES = frozenset({"chat", "chat_completions", "responses", "messages"})


@dataclass(frozen=True, slots=True)
class Reading:
    model: str | None = None              # the struct's Model ("" and null read as None)
    keep_alive_ns: int | None = None      # None: not set; FOREVER: negative; 0: unload
    caps: dict[str, int | None] = field(default_factory=dict)  # this route's caps: None when not set
    options: dict[str, Any] | None = None  # numbers as floats, as Go's map[string]any holds them
    tool_types: tuple[str, ...] | None = None  # each tool's "type" ("" when it has none)


def caps_of(route: routes.Route) -> tuple[str, ...]:
    if route.name == "completions":
        return ("max_tokens",)  # openai.CompletionRequest has no max_completion_tokens
    return CAPS.get(route.output_cap, ())


def _int_field(raw: bytes | bytearray | None, name: str) -> int | None:
    """A Go `int`/`*int` field: an integer literal in int64 (Go refuses 1.0 and 1e3), or null."""
    if raw is None or raw == b"null":
        return None
    if not re.fullmatch(rb"-?(?:0|[1-9][0-9]{0,18})", raw) or not -_INT64 <= int(raw) < _INT64:
        raise BadRequest(f"{name} must be an integer")
    return int(raw)


def _string_field(raw: bytes | bytearray | None, name: str) -> str | None:
    if raw is None:
        return None
    if len(raw) > MAX_NAME_FIELD and name in ("model", "name"):
        raise BadRequest("model name too long")
    value = decode_value(raw)
    if value is None:
        return None  # Go leaves the string as it was: empty
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def go_int(value: Any, name: str) -> int | None:
    """An option Ollama's Options.FromMap turns into an int: int64(float64), truncated; null is unset."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, float):
        raise BadRequest(f"option {name!r} must be of type integer")
    if not -_INT64 < value < _INT64:
        raise BadRequest(f"option {name!r} is out of range")
    return int(value)


# --- durations ------------------------------------------------------------------------------

_UNITS = {b"ns": 1, b"us": 1000, "µs".encode(): 1000, "μs".encode(): 1000, b"ms": 10**6,
          b"s": 10**9, b"m": 60 * 10**9, b"h": 3600 * 10**9}


def parse_go_duration(text: str) -> int:
    """Nanoseconds from Go's time.ParseDuration, exactly (its overflow rules too); ValueError otherwise."""
    s = text.encode("utf-8")
    neg = False
    if s[:1] in (b"-", b"+"):
        neg, s = s[:1] == b"-", s[1:]
    if s == b"0":
        return 0
    if not s:
        raise ValueError(text)
    d = 0
    while s:
        if not (s[:1] == b"." or s[:1].isdigit()):
            raise ValueError(text)
        i = 0
        v = 0
        while i < len(s) and 0x30 <= s[i] <= 0x39:
            if v > _INT64 // 10:
                raise ValueError(text)
            v = v * 10 + s[i] - 0x30
            if v > _INT64:
                raise ValueError(text)
            i += 1
        pre = i > 0
        s = s[i:]
        f, scale, post = 0, 1.0, False
        if s[:1] == b".":
            s = s[1:]
            i, overflow = 0, False
            while i < len(s) and 0x30 <= s[i] <= 0x39:
                if not overflow:
                    if f > (_INT64 - 1) // 10:
                        overflow = True
                    else:
                        y = f * 10 + s[i] - 0x30
                        if y > _INT64:
                            overflow = True
                        else:
                            f, scale = y, scale * 10
                i += 1
            post = i > 0
            s = s[i:]
        if not pre and not post:
            raise ValueError(text)
        i = 0
        while i < len(s) and not (s[i] == 0x2E or 0x30 <= s[i] <= 0x39):
            i += 1
        unit = _UNITS.get(s[:i])
        if unit is None:
            raise ValueError(text)
        s = s[i:]
        if v > _INT64 // unit:
            raise ValueError(text)
        v *= unit
        if f > 0:
            v += int(float(f) * (float(unit) / scale)) & (2**64 - 1)
            if v > _INT64:
                raise ValueError(text)
        d += v
        if d > _INT64:
            raise ValueError(text)
    if neg:
        return -d
    if d > _INT64 - 1:
        raise ValueError(text)
    return d


def keep_alive_ns(raw: bytes | bytearray | None) -> int | None:
    """keep_alive as Ollama v0.33's Duration.UnmarshalJSON reads it: a number is seconds,
    time.Duration(t * 1e9) truncated to whole nanoseconds; a string goes through
    time.ParseDuration; negative is forever (FOREVER).  None when not set (absent or null)."""
    if raw is None or raw == b"null":
        return None
    value = decode_value(raw)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest("keep_alive must be a number of seconds or a duration")
    if isinstance(value, str):
        try:
            ns = parse_go_duration(value)
        except ValueError:
            raise BadRequest("keep_alive must be a number of seconds or a duration like \"5m\"") from None
        return FOREVER if ns < 0 else ns
    t = float(value)  # Go decodes the number into a float64 first
    if t < 0:
        return FOREVER
    scaled = t * 1e9
    if scaled >= _INT64:
        # Go's float-to-int conversion is undefined here (amd64 gives a negative duration).
        raise BadRequest("keep_alive is out of range")
    return int(scaled)


# --- the reading ----------------------------------------------------------------------------

def _sub_field(raw: bytes | bytearray | None, name: str, what: str) -> bytes | bytearray | None:
    """One field of an object-valued field (Go decodes it into a struct, matching names the same way)."""
    if raw is None or raw == b"null":
        return None
    if not raw.startswith(b"{"):
        raise BadRequest(f"{what} must be an object")
    return read_top(raw, frozenset({name}), top=False).get(name)


def read_json(route: routes.Route, body: bytes | bytearray) -> Reading:
    """The Reading of a JSON body on `route` (BadRequest when the body is not in the grammar)."""
    top = read_top(body)
    model = _string_field(top.get("model"), "model")
    if route.model == routes.BODY_OR_NAME and not model:
        model = _string_field(top.get("name"), "name")
    options: dict[str, Any] | None = None
    if top.get("options") is not None and route.options:
        value = decode_value(top["options"], go_any=True)
        if value is not None and not isinstance(value, dict):
            raise BadRequest("options must be an object")
        options = value
    caps: dict[str, int | None] = {}
    for cap in caps_of(route):
        if cap == "options.num_predict":
            caps[cap] = go_int((options or {}).get("num_predict"), "num_predict")
        elif cap == "thinking.budget_tokens":
            caps[cap] = _int_field(_sub_field(top.get("thinking"), "budget_tokens", "thinking"),
                                   "thinking.budget_tokens")
        else:
            caps[cap] = _int_field(top.get(cap), cap)
    tool_types: tuple[str, ...] | None = None
    raw_tools = top.get("tools") if route.name in TOOLS_ROUTES else None
    if raw_tools is not None and raw_tools != b"null":
        if not raw_tools.startswith(b"["):
            raise BadRequest("tools must be an array")
        tool_types = tuple(_string_field(_sub_field(t, "type", "a tool"), "a tool's type") or ""
                           for t in array_items(raw_tools))
    return Reading(model or None, keep_alive_ns(top.get("keep_alive")) if route.keep_alive else None,
                   caps, options, tool_types)
