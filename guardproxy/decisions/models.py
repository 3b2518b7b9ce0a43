"""Which model a request uses, and whether its key may use it.  Pure logic: no asyncio.

The model is read the way Ollama will read it, never a friendlier way: a
JSON body through the strict grammar of json_body.py (reading.py says what
each field means to Ollama), a form through forms.py.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Iterable, Mapping

from ..config.model import KeyEntry
from ..wire.errors import BadRequest, Forbidden
from . import forms
from .reading import FOREVER, Reading, parse_go_duration, read_json
from .routes import Route

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

_LOGGED_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


def model_for_log(body: bytes) -> str | None:
    """The body's "model", found without parsing it: for the access log only, never for a decision."""
    m = _LOGGED_MODEL.search(body)
    return m.group(1).decode("utf-8", "replace") if m else None


def _reading(route: Route, body: bytes | bytearray | Reading) -> Reading:
    return read_json(route, body) if isinstance(body, (bytes, bytearray)) else body


def body_model(route: Route, body: bytes | Reading) -> str:
    """The model Ollama will use from a JSON body (or its Reading); BadRequest if there is none
    or the body is outside the grammar (json_body.py)."""
    model = _reading(route, body).model
    if model is None or not model.strip():
        raise BadRequest("request body must name a model")
    return model


# --- the model of a multipart form (/v1/audio/transcriptions) -----------------------------

form_model = forms.form_model


# --- keep_alive ---------------------------------------------------------------------------

def go_duration(text: str) -> float:
    """Seconds from Go's time.ParseDuration syntax ("5m", "1h30m", "-1s", "0"); ValueError otherwise."""
    return parse_go_duration(text) / 1e9


_KEEP_ALIVE_ROUTE = Route("keep_alive", frozenset(), b"", keep_alive=True)


def check_keep_alive(key: KeyEntry, body: bytes | Reading) -> None:
    """With a key's max_keep_alive: refuse a body (or its Reading) that pins a model, unloads
    one, or keeps it longer.  The duration is Ollama's (v0.33): a number of seconds becomes
    whole nanoseconds first, so 5e-324 is 0, an unload."""
    limit = key.max_keep_alive
    if limit is None:
        return
    ns = _reading(_KEEP_ALIVE_ROUTE, body).keep_alive_ns
    if ns is None:
        return
    if ns == FOREVER:
        raise Forbidden("this key may not keep a model loaded forever (negative keep_alive)")
    if ns == 0:
        raise Forbidden("this key may not unload models (keep_alive 0)")
    if ns > limit * 1e9:
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
