"""What a key may do: path shape, admin endpoints, model allow-lists.  Pure logic: no asyncio.

Path rules are checked on the exact path that is forwarded, and a path that
any normalisation (slash merging, dot segments, percent-decoding) would
change is refused outright, so a check can never disagree with the router
behind it about which endpoint a request reaches.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from functools import lru_cache

from ..config.model import KeyEntry
from ..wire.errors import BadRequest, Forbidden

ADMIN_PATHS = frozenset({b"/api/pull", b"/api/push", b"/api/delete", b"/api/create", b"/api/copy"})
ADMIN_PREFIX = b"/api/blobs"
# Endpoints whose JSON body names a model.
MODEL_PATHS = frozenset({b"/api/generate", b"/api/chat", b"/api/embed", b"/api/embeddings", b"/api/show",
                         b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"})
# Endpoints that run the GPU: these take a concurrency slot and carry token counts.
GENERATION_PATHS = MODEL_PATHS - {b"/api/show"}
# Small JSON responses listing models; filtered to the key's allow-list.
LISTING_PATHS = frozenset({b"/api/tags", b"/api/ps", b"/v1/models"})
# A request body read whole to find its model: chat requests can carry
# base64 images, so this is generous; it applies only to keys with a model list.
MAX_MODEL_BODY = 16 * 1024 * 1024
_PATH_OK = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/:@!$&'()*+,;=")


class NotNormalPath(BadRequest):
    message = "request path must be in normal form"


def check_path(target: bytes) -> bytes:
    """The path of an origin-form target, or NotNormalPath if normalising would change it."""
    path = target.split(b"?", 1)[0]
    if not path.startswith(b"/") or b"//" in path:
        raise NotNormalPath()  # absolute-form, authority-form, "*", merged slashes
    if not all(c in _PATH_OK for c in path):
        raise NotNormalPath()  # percent-encoding, backslashes, anything a decoder would touch
    for seg in path.split(b"/"):
        if seg in (b".", b".."):
            raise NotNormalPath()
    return path


def is_admin_path(path: bytes) -> bool:
    p = path.rstrip(b"/") or b"/"
    return p in ADMIN_PATHS or p == ADMIN_PREFIX or p.startswith(ADMIN_PREFIX + b"/")


_READ_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


def check_endpoint(key: KeyEntry, path: bytes, method: bytes = b"GET") -> None:
    admin_path = is_admin_path(path)
    if not key.admin and admin_path:
        raise Forbidden("this key may not use administrative endpoints")
    # A key limited to some models may only send work to the endpoints whose
    # model is checked, so an endpoint added to Ollama later cannot bypass its list.
    if key.models is not None and method not in _READ_METHODS and path not in MODEL_PATHS and not admin_path:
        raise Forbidden("this key may not use this endpoint")
    if key.models is not None and path.startswith(b"/v1/models/"):
        name = path[len(b"/v1/models/"):].decode("utf-8", "replace")
        if not model_allowed(key.models, name):
            raise Forbidden(f"this key may not use model {name[:200]!r}")


# --- models -------------------------------------------------------------------------

def _canonical(name: str) -> str:
    """Model names as Ollama resolves them: case-insensitive, default registry and tag."""
    n = name.strip().lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        if n.startswith(prefix):
            n = n[len(prefix):]
    return n


def model_allowed(patterns: tuple[str, ...] | None, name: str) -> bool:
    if patterns is None:
        return True
    return _matches(patterns, name[:512])


@lru_cache(maxsize=4096)  # bounded: names come from clients
def _matches(patterns: tuple[str, ...], name: str) -> bool:
    n = _canonical(name)
    names = {n, n + ":latest"} if ":" not in n.rsplit("/", 1)[-1] else {n}
    for pat in patterns:
        p = _canonical(pat)
        pats = (p, p + ":latest") if ":" not in p.rsplit("/", 1)[-1] and "*" not in p else (p,)
        if any(fnmatchcase(x, q) for x in names for q in pats):
            return True
    return False


def body_models(body: bytes) -> list[str]:
    """Every model a request body names: top-level "model"/"name" in any letter case.

    Go's encoding/json (Ollama's) matches field names case-insensitively and
    the last match in the document wins; that value is always the last value
    of one spelling, which is what a dict keeps, so checking every spelling
    present covers it: {"model":"ok","MODEL":"other"} is checked as a whole.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("request body must be JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    names = [v for k, v in data.items() if k.lower() in ("model", "name")]
    if not names or not all(isinstance(n, str) for n in names):
        raise BadRequest("request body must name a model")
    return names


def check_models(key: KeyEntry, body: bytes) -> str:
    """The model a request uses, or Forbidden when the key may not use it."""
    names = body_models(body)
    for n in names:
        if not model_allowed(key.models, n):
            raise Forbidden(f"this key may not use model {n[:200]!r}")
    return names[-1]


def filter_listing(path: bytes, key: KeyEntry, body: bytes) -> bytes:
    """A /api/tags, /api/ps or /v1/models response body with only the key's models."""
    data = json.loads(body)
    if path == b"/v1/models":
        data["data"] = [m for m in data.get("data") or [] if isinstance(m, dict)
                        and model_allowed(key.models, str(m.get("id", "")))]
    else:
        data["models"] = [m for m in data.get("models") or [] if isinstance(m, dict)
                          and model_allowed(key.models, str(m.get("name") or m.get("model") or ""))]
    return json.dumps(data, separators=(",", ":")).encode()
