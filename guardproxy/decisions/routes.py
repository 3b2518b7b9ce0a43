"""Ollama's API surface as one table, and who may use which route.  Pure logic: no asyncio.

Every question the request path asks about a route (may this key use it,
where is its model, does it take a generation slot, is its answer a model
list, how are its token counts written) is answered by the row of ROUTES.
A route that is not in the table is forwarded for admin keys only: every
other key gets 404 and nothing reaches Ollama, so a route a newer Ollama
adds stays closed until it is added here.

Path rules are checked on the exact path that is forwarded, and a path that
any normalisation (slash merging, dot segments, percent-decoding) would
change is refused outright, so a check can never disagree with the router
behind it about which endpoint a request reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.model import KeyEntry
from ..wire.errors import BadRequest, Forbidden, GuardError, MethodNotAllowed

# Where a route's model name is (Route.model).
NO_MODEL = 0
BODY = 1          # the JSON body's "model"
BODY_OR_NAME = 2  # "model", else the older "name" (/api/show)
PATH = 3          # the last path segment (/v1/models/{model})
FORM = 4          # a multipart form field "model" (/v1/audio/transcriptions)

# A body read whole to find its model, or to complete it before a slot is
# taken: chat requests carry base64 images, so this is generous.
MAX_MODEL_BODY = 16 * 1024 * 1024
# Ollama parses a transcription's form with 25 MiB in memory; with the form's own overhead:
MAX_FORM_BODY = 26 * 1024 * 1024
# Ollama's own bound for /v1/systemone with images (0.35).
MAX_SYSTEMONE_BODY = 32 * 1024 * 1024

_GET = frozenset({b"GET"})
_GET_HEAD = frozenset({b"GET", b"HEAD"})
_POST = frozenset({b"POST"})
_POST_HEAD = frozenset({b"POST", b"HEAD"})
_DELETE = frozenset({b"DELETE"})

# Route.counts: where a generation's answer carries its token counts.
OLLAMA = "ollama"          # the final line's prompt_eval_count / eval_count
OPENAI = "openai"          # usage.prompt_tokens / completion_tokens
RESPONSES = "responses"    # usage.input_tokens / output_tokens, in response.completed
ANTHROPIC = "anthropic"    # input_tokens in message_start, output_tokens in the last message_delta

# Route.web_search: how Ollama's middleware spots its server-side web-search tool in `tools`.
WEB_SEARCH_PREFIX = "prefix"  # /v1/messages: a tool whose "type" starts with "web_search"
WEB_SEARCH_EXACT = "exact"    # /v1/responses: a tool whose "type" is exactly "web_search"


@dataclass(frozen=True, slots=True)
class Route:
    name: str                  # stable: access log, metrics
    methods: frozenset[bytes]
    path: bytes                # exact, or with `param` a prefix followed by one path segment
    admin: bool = False        # admin keys only (changes the server, or the owner's ollama.com account)
    model: int = NO_MODEL
    generation: bool = False   # runs the GPU: takes a slot, its token counts are read
    listing: bool = False      # a model list, filtered to a key's models
    zstd: bool = False         # Ollama decompresses a zstd request body here (its /v1 JSON routes)
    keep_alive: bool = False   # the body may carry keep_alive (Ollama's own API)
    param: bool = False        # `path` is a prefix; the rest is one segment (gin's ":param")
    max_body: int = MAX_MODEL_BODY  # when the body is read whole
    blob: bool = False         # a model blob upload: streamed, under [server] max_blob
    counts: str = ""           # how a generation's token counts are written (see engine/tokens.py)
    options: bool = False      # Ollama honours the body's "options" (num_ctx, placement): its own /api routes
    output_cap: str = ""       # the dialect of the body's output cap (OLLAMA, OPENAI, RESPONSES, ANTHROPIC)
    web_search: str = ""       # a tool here can make Ollama search the web on the owner's account
    subtree: bool = False      # `path` is a prefix of any depth, any method (/api/codex/...)


ROUTES: tuple[Route, ...] = (
    Route("root", _GET_HEAD, b"/"),
    Route("version", _GET_HEAD, b"/api/version"),
    Route("status", _GET, b"/api/status"),
    Route("tags", _GET_HEAD, b"/api/tags", listing=True),
    Route("ps", _GET, b"/api/ps", listing=True),
    Route("models", _GET, b"/v1/models", listing=True),
    Route("model", _GET, b"/v1/models/", model=PATH, param=True),
    Route("show", _POST, b"/api/show", model=BODY_OR_NAME),
    Route("generate", _POST, b"/api/generate", model=BODY, generation=True, keep_alive=True, counts=OLLAMA,
          options=True, output_cap=OLLAMA),
    Route("chat", _POST, b"/api/chat", model=BODY, generation=True, keep_alive=True, counts=OLLAMA,
          options=True, output_cap=OLLAMA),
    Route("embed", _POST, b"/api/embed", model=BODY, generation=True, keep_alive=True, counts=OLLAMA,
          options=True),
    Route("embeddings", _POST, b"/api/embeddings", model=BODY, generation=True, keep_alive=True,
          counts=OLLAMA, options=True),
    Route("chat_completions", _POST, b"/v1/chat/completions", model=BODY, generation=True, zstd=True,
          counts=OPENAI, output_cap=OPENAI),
    Route("completions", _POST, b"/v1/completions", model=BODY, generation=True, zstd=True, counts=OPENAI,
          output_cap=OPENAI),
    Route("v1_embeddings", _POST, b"/v1/embeddings", model=BODY, generation=True, zstd=True, counts=OPENAI),
    Route("responses", _POST, b"/v1/responses", model=BODY, generation=True, zstd=True, counts=RESPONSES,
          output_cap=RESPONSES, web_search=WEB_SEARCH_EXACT),
    Route("messages", _POST, b"/v1/messages", model=BODY, generation=True, zstd=True, counts=ANTHROPIC,
          output_cap=ANTHROPIC, web_search=WEB_SEARCH_PREFIX),
    # Ollama 0.35+: a non-streaming generation; usage.input_tokens / output_tokens (read from the
    # long tail, as for Responses); bodies up to 64 KiB, 32 MiB with images.
    Route("systemone", _POST, b"/v1/systemone", model=BODY, generation=True, keep_alive=True,
          max_body=MAX_SYSTEMONE_BODY, counts=RESPONSES),
    Route("transcriptions", _POST, b"/v1/audio/transcriptions", model=FORM, generation=True,
          max_body=MAX_FORM_BODY, counts=OPENAI),
    # Ollama 0.14 to 0.32.5; later versions answer 404 themselves.
    Route("image_generations", _POST, b"/v1/images/generations", model=BODY, generation=True, zstd=True,
          counts=OPENAI),
    Route("image_edits", _POST, b"/v1/images/edits", model=BODY, generation=True, zstd=True, counts=OPENAI),
    # Administration: the server's models.
    Route("pull", _POST, b"/api/pull", admin=True),
    Route("push", _POST, b"/api/push", admin=True),
    Route("create", _POST, b"/api/create", admin=True),
    Route("copy", _POST, b"/api/copy", admin=True),
    Route("delete", _DELETE, b"/api/delete", admin=True),
    Route("blobs", _POST_HEAD, b"/api/blobs/", admin=True, param=True, blob=True),
    # Administration: the owner's ollama.com account and quota.
    Route("me", _POST, b"/api/me", admin=True),
    Route("signout", _POST, b"/api/signout", admin=True),
    Route("user_keys", _DELETE, b"/api/user/keys/", admin=True, param=True),
    Route("web_search", _POST, b"/api/experimental/web_search", admin=True),
    Route("web_fetch", _POST, b"/api/experimental/web_fetch", admin=True),
    # Ollama 0.34+: forwards what its local catalog lacks to OpenAI with the caller's headers, and
    # trusts "local" callers by their connecting address, which behind a gate is always loopback.
    Route("codex", frozenset(), b"/api/codex/", admin=True, subtree=True),
)

# A route not in the table; forwarded for admin keys only.
UNKNOWN = Route("other", frozenset(), b"", admin=True)
# Answered by guardproxy itself, never forwarded.
HEALTH = Route("health", _GET_HEAD, b"/health")
METRICS = Route("metrics", _GET, b"/metrics")

_EXACT: dict[tuple[bytes, bytes], Route] = {(m, r.path): r for r in ROUTES if not r.param for m in r.methods}
_PARAM: tuple[Route, ...] = tuple(r for r in ROUTES if r.param)
_SUBTREE: tuple[Route, ...] = tuple(r for r in ROUTES if r.subtree)
# Paths whose every method is administrative: /api/pull with GET is still the admin family.
_ADMIN_PATHS = frozenset(r.path for r in ROUTES if r.admin and not (r.param or r.subtree))
_ADMIN_PREFIXES = tuple(r.path for r in ROUTES if r.admin and (r.param or r.subtree))


def route_for(method: bytes, path: bytes) -> Route:
    """The table's row for a request (UNKNOWN when there is none); `path` is already checked."""
    r = _EXACT.get((method, path))
    if r is not None:
        return r
    for r in _PARAM:
        if path.startswith(r.path) and method in r.methods:
            rest = path[len(r.path):]
            if rest and b"/" not in rest:
                return r
    for r in _SUBTREE:
        if path.startswith(r.path) or path == r.path.rstrip(b"/"):
            return r
    if len(path) > 1 and path.endswith(b"/"):
        # Ollama's router redirects /api/tags/ to /api/tags: the same route.
        return route_for(method, path.rstrip(b"/") or b"/")
    return METRICS if path == b"/metrics" else UNKNOWN  # (whatever the method: never forwarded)


def is_admin_path(path: bytes) -> bool:
    """A path of the administrative family, whatever the method (/api/pull, /api/blobs/...)."""
    p = path.rstrip(b"/") or b"/"
    return p in _ADMIN_PATHS or any(p == prefix.rstrip(b"/") or p.startswith(prefix) for prefix in _ADMIN_PREFIXES)


class NotFound(GuardError):
    status = 404
    message = "not found"


def authorize(key: KeyEntry, route: Route, path: bytes) -> None:
    """May this key use this route at all (its model is checked later, see models.py)?"""
    if key.admin:
        return
    if route is UNKNOWN:
        # A known administrative path with another method is still administrative: 403, as before.
        if is_admin_path(path):
            raise Forbidden("this key may not use administrative endpoints")
        raise NotFound()
    if route.admin:
        raise Forbidden("this key may not use administrative endpoints")


def authorize_metrics(key: KeyEntry, method: bytes, has_body: bool) -> None:
    """May this request read GET /metrics on the main listener?"""
    if not (key.admin or key.metrics):
        raise Forbidden("this key may not read metrics (that needs admin = true or metrics = true)")
    if method != b"GET":
        raise MethodNotAllowed(headers=[("Allow", "GET")])
    if has_body:
        raise BadRequest("GET /metrics takes no body")


# --- paths ------------------------------------------------------------------------------

_PATH_OK = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/:@!$&'()*+,;="


class NotNormalPath(BadRequest):
    message = "request path must be in normal form"


def check_path(target: bytes) -> bytes:
    """The path of an origin-form target, or NotNormalPath if normalising would change it."""
    path = target.split(b"?", 1)[0]
    if not path.startswith(b"/") or b"//" in path:
        raise NotNormalPath()  # absolute-form, authority-form, "*", merged slashes
    if path.translate(None, _PATH_OK):
        raise NotNormalPath()  # percent-encoding, backslashes, anything a decoder would touch
    for seg in path.split(b"/"):
        if seg in (b".", b".."):
            raise NotNormalPath()
    return path
