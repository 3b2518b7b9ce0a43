"""Which model a request uses, and whether its key may use it.  Pure logic: no asyncio.

The model is read the way Ollama will read it, never a friendlier way: Go's
encoding/json matches field names case-insensitively and the last match
wins, while Ollama's cloud middleware looks up "model" exactly; a body in
which those could disagree (two spellings or copies of the field with
different values) is refused with 400 rather than guessed at.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl

from ..config.model import KeyEntry
from ..wire.errors import BadRequest, Forbidden
from .routes import BODY_OR_NAME, Route

# Ollama's longest name: host (350) / namespace (80) / model (80) : tag (80),
# an "@sha256:<64 hex>" digest and a ":cloud" suffix (types/model/name.go).
MAX_MODEL_NAME = 350 + 1 + 80 + 1 + 80 + 1 + 80 + 8 + 64 + 6
_SHOWN = 200  # characters of a refused name quoted back


def canonical(name: str) -> str:
    """Model names as Ollama resolves them: case-insensitive, default registry and namespace."""
    n = name.strip().lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        if n.startswith(prefix):
            n = n[len(prefix):]
    return n


def tagged(name: str) -> str:
    """The name with its tag: Ollama's default tag is "latest" (`llama3.2` is `llama3.2:latest`)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def entry_name(entry: Mapping[str, Any]) -> str:
    """The model an entry of /api/tags or /api/ps names."""
    return str(entry.get("name") or entry.get("model") or "")


def model_allowed(patterns: tuple[str, ...] | None, name: str) -> bool:
    if patterns is None:
        return True
    return _matches(patterns, name[:MAX_MODEL_NAME])


@lru_cache(maxsize=4096)  # bounded: names come from clients
def _matches(patterns: tuple[str, ...], name: str) -> bool:
    n = canonical(name)
    names = {n, tagged(n)}
    for pat in patterns:
        p = canonical(pat)
        pats = (p, tagged(p)) if "*" not in p else (p,)
        if any(fnmatchcase(x, q) for x in names for q in pats):
            return True
    return False


def is_cloud(name: str) -> bool:
    """Ollama's own rule (internal/modelref parseSourceSuffix): the text after the last ':',
    trimmed and in any case, is "cloud", or ends in "-cloud" and holds no '/'."""
    idx = name.rfind(":")
    if idx < 0:
        return False
    suffix = name[idx + 1:].strip()
    low = suffix.lower()
    return low == "cloud" or (low.endswith("-cloud") and "/" not in suffix)


def may_use_cloud(key: KeyEntry) -> bool:
    return key.admin or key.cloud


def needs_model(key: KeyEntry, route: Route) -> bool:
    """Whether this key's policy depends on the request's model (its model list, or the cloud scope)."""
    return route.model != 0 and (key.models is not None or not may_use_cloud(key))


def check_model(key: KeyEntry, name: str) -> None:
    """Forbidden when the key may not use the model, BadRequest when no model could be named so."""
    if len(name) > MAX_MODEL_NAME:
        raise BadRequest("model name too long")
    if is_cloud(name) and not may_use_cloud(key):
        raise Forbidden(f"this key may not use cloud model {name[:_SHOWN]!r}")
    if not model_allowed(key.models, name):
        raise Forbidden(f"this key may not use model {name[:_SHOWN]!r}")


# --- the model of a JSON body ------------------------------------------------------------

def could_name_cloud(body: bytes) -> bool:
    """False only when no string in the body can decode to text containing "cloud".

    A letter in a JSON string is either itself or a \\u escape, so a body
    with neither "cloud" in any letter case nor a backslash-u cannot name a
    cloud model: keys whose only restriction is the cloud scope skip the parse.
    """
    return b"\\u" in body or b"cloud" in body.lower()


_LOGGED_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


def model_for_log(body: bytes) -> str | None:
    """The body's "model", found without parsing it: for the access log only, never for a decision."""
    m = _LOGGED_MODEL.search(body)
    return m.group(1).decode("utf-8", "replace") if m else None


def _fold(name: str) -> str:
    """Go's case folding as far as ASCII field names can see it (bytes.EqualFold)."""
    if not name.isascii():
        # The only non-ASCII letters that fold onto ASCII ones: KELVIN SIGN and LONG S.
        name = name.replace("\u212a", "k").replace("\u017f", "s")
    return name.lower()


Pairs = list[tuple[str, Any]]  # a JSON object's members in order, as sent (repeats kept)


def top_level(body: bytes) -> Pairs:
    """The members of a JSON body's top-level object (BadRequest if it is not one)."""
    try:
        doc = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    except (ValueError, RecursionError):
        raise BadRequest("request body must be JSON") from None
    if not isinstance(doc, list) or (doc and not isinstance(doc[0], tuple)):
        raise BadRequest("request body must be a JSON object")
    return doc


def _pairs(body: bytes | Pairs) -> Pairs:
    return top_level(body) if isinstance(body, bytes) else body


def json_field(pairs: Pairs, field: str) -> Any:
    """The value Ollama's decoder gives a struct field (None when absent); 400 when decoders could differ."""
    values = [v for k, v in pairs if _fold(k) == field]
    if not values:
        return None
    if any(v != values[0] for v in values[1:]):
        raise BadRequest(f"request body sets {field!r} more than once")
    return values[-1]


def body_model(route: Route, body: bytes | Pairs) -> str:
    """The model Ollama will use from a JSON body, or its top_level() (BadRequest if there is none
    or it is ambiguous)."""
    pairs = _pairs(body)
    model = json_field(pairs, "model")
    if route.model == BODY_OR_NAME and (model is None or model == ""):
        model = json_field(pairs, "name")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("request body must name a model" if model in (None, "") else "model must be a string")
    return model


# --- the model of a multipart form (/v1/audio/transcriptions) -----------------------------

_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[!#$%&\'*+.^_`|~0-9A-Za-z-]+)')


def _params(value: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos = 0
    rest = ";" + rest if rest else ""
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            if rest[pos:].strip(" ;"):
                raise BadRequest("malformed multipart header")
            break
        name, v = m.group(1).lower(), m.group(2)
        if name.endswith("*") or name in params:
            raise BadRequest("multipart parameter not accepted here")  # RFC 2231 or repeated
        params[name] = re.sub(r"\\(.)", r"\1", v[1:-1]) if v.startswith('"') else v
        pos = m.end()
    return kind.strip().lower(), params


def form_model(body: bytes, content_type: bytes | None, target: bytes) -> str:
    """The model Ollama's FormValue("model") returns: the first form value, else the query's."""
    kind, params = _params((content_type or b"").decode("latin-1"))
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not 1 <= len(boundary) <= 70:
        raise BadRequest("request body must be a multipart form")
    values: list[str] = []
    # A delimiter is CRLF "--" boundary; the first one may open the body.
    parts = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    if len(parts) < 3 or not parts[-1].startswith(b"--"):
        raise BadRequest("malformed multipart form")
    for part in parts[1:-1]:
        line_end = part.find(b"\r\n")
        if line_end < 0 or part[:line_end].strip(b" \t"):
            raise BadRequest("malformed multipart form")
        head, sep, content = part[line_end + 2:].partition(b"\r\n\r\n")
        if not sep:
            if not head.startswith(b"\r\n"):
                raise BadRequest("malformed multipart form")
            head, content = b"", head[2:]  # a part without header fields
        disposition = None
        for line in head.split(b"\r\n") if head else ():
            hname, colon, hvalue = line.partition(b":")
            if not colon:
                raise BadRequest("malformed multipart header")
            hname = hname.strip().lower()
            if hname == b"content-transfer-encoding":
                # Go decodes quoted-printable parts by itself: a value could read differently.
                raise BadRequest("multipart Content-Transfer-Encoding not accepted here")
            if hname == b"content-disposition":
                if disposition is not None:
                    raise BadRequest("malformed multipart header")
                disposition = hvalue.decode("utf-8", "replace")
        if disposition is None:
            continue
        dkind, dparams = _params(disposition)
        if dkind == "form-data" and dparams.get("name") == "model" and "filename" not in dparams:
            values.append(content.decode("utf-8", "replace"))
    query = target.partition(b"?")[2].decode("latin-1")
    if ";" in query:
        raise BadRequest("malformed query string")
    values += [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "model"]
    if not values or not values[0]:
        raise BadRequest("request body must name a model")
    if any(v != values[0] for v in values[1:]):
        raise BadRequest("request sets 'model' more than once")
    return values[0]


# --- keep_alive ---------------------------------------------------------------------------

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def go_duration(text: str) -> float:
    """Seconds from Go's time.ParseDuration syntax ("5m", "1h30m", "-1s", "0"); ValueError otherwise."""
    s = text
    sign = -1.0 if s.startswith("-") else 1.0
    s = s[1:] if s[:1] in "+-" else s
    if s == "0":
        return 0.0
    total, pos = 0.0, 0
    if not s:
        raise ValueError(text)
    while pos < len(s):
        m = _GO_DURATION.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise ValueError(text)
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def check_keep_alive(key: KeyEntry, body: bytes | Pairs) -> None:
    """With a key's max_keep_alive: refuse a body (or its top_level()) that pins a model, unloads
    one, or keeps it longer."""
    limit = key.max_keep_alive
    if limit is None:
        return
    value = json_field(_pairs(body), "keep_alive")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest("keep_alive must be a number of seconds or a duration")
    try:
        seconds = float(value) if not isinstance(value, str) else go_duration(value)
    except ValueError:
        raise BadRequest("keep_alive must be a number of seconds or a duration like \"5m\"") from None
    if seconds < 0:
        raise Forbidden("this key may not keep a model loaded forever (negative keep_alive)")
    if seconds == 0:
        raise Forbidden("this key may not unload models (keep_alive 0)")
    if seconds > limit:
        raise Forbidden(f"this key may keep a model loaded for at most {limit:g} s (keep_alive)")


# --- listings -------------------------------------------------------------------------------

def visible_entries(path: bytes, key: KeyEntry, entries: Iterable[Any]) -> list[dict[str, Any]]:
    """The entries of a listing (/v1/models' `data`, else `models`) that name models the key may use."""
    cloud = may_use_cloud(key)

    def ok(name: str) -> bool:
        return model_allowed(key.models, name) and (cloud or not is_cloud(name))
    if path == b"/v1/models":
        return [m for m in entries if isinstance(m, dict) and ok(str(m.get("id", "")))]
    return [m for m in entries if isinstance(m, dict) and ok(entry_name(m))]


def filter_listing(path: bytes, key: KeyEntry, body: bytes) -> bytes:
    """A /api/tags, /api/ps or /v1/models response body with only the models the key may use."""
    data = json.loads(body)
    field = "data" if path == b"/v1/models" else "models"
    data[field] = visible_entries(path, key, data.get(field) or [])
    return json.dumps(data, separators=(",", ":")).encode()
