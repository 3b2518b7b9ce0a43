"""CORS decisions for browser apps.  Pure logic: no asyncio.

guardproxy answers CORS itself: a preflight never reaches Ollama, the
browser's Origin is never forwarded (Ollama answers 403 to origins outside
OLLAMA_ORIGINS), and the upstream's own Access-Control-* headers are replaced
by these.  Credentials (cookies) are never allowed: keys travel in headers.
"""

from __future__ import annotations

import re

from ..config.model import Cors
from ..wire.heads import RequestHead
# Advertise exactly what the head check lets through (anything else gets 405).
from ..wire.strict import ALLOW_HEADER as ALLOW_METHODS

BASE_HEADERS = ("Content-Type", "X-API-Key", "Authorization")
_TOKEN_LIST = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~\-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~\-]+)*$")
MAX_REQUEST_HEADERS = 1024  # bytes of Access-Control-Request-Headers echoed back


class CorsPolicy:
    def __init__(self, cors: Cors) -> None:
        self.wildcard = "*" in cors.origins
        self.origins = frozenset(o.encode("latin-1") for o in cors.origins if o != "*")
        self.max_age = str(cors.max_age)
        self.enabled = bool(cors.origins)

    def allowed(self, origin: bytes | None) -> bool:
        if origin is None or not self.enabled or origin == b"null":
            return False
        return self.wildcard or origin.lower() in self.origins

    def response_headers(self, origin: bytes | None) -> list[tuple[str, str]]:
        """Headers for an actual (non-preflight) response: proxied or guardproxy's own error."""
        if not self.allowed(origin):
            return [("Vary", "Origin")] if self.enabled and origin is not None else []
        assert origin is not None
        allow = "*" if self.wildcard else origin.decode("latin-1")
        return [("Access-Control-Allow-Origin", allow), ("Access-Control-Expose-Headers", "Retry-After"),
                ("Vary", "Origin")]

    def preflight_headers(self, req: RequestHead) -> list[tuple[str, str]]:
        """Headers for a 204 preflight answer; empty for an origin that is not allowed."""
        origin = req.get(b"origin")
        if not self.allowed(origin):
            return [("Vary", "Origin")] if self.enabled else []
        headers = list(BASE_HEADERS)
        wanted = req.get(b"access-control-request-headers")
        if wanted and len(wanted) <= MAX_REQUEST_HEADERS and _TOKEN_LIST.match(wanted.strip()):
            known = {h.lower() for h in headers}
            for h in wanted.decode("latin-1").split(","):
                h = h.strip()
                if h.lower() not in known:
                    known.add(h.lower())
                    headers.append(h)
        return self.response_headers(origin)[:1] + [
            ("Access-Control-Allow-Methods", ALLOW_METHODS),
            ("Access-Control-Allow-Headers", ", ".join(headers)),
            ("Access-Control-Max-Age", self.max_age),
            ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]


def is_preflight(req: RequestHead) -> bool:
    return req.method == b"OPTIONS" and req.get(b"origin") is not None \
        and req.get(b"access-control-request-method") is not None


def header_bytes(headers: list[tuple[str, str]]) -> bytes:
    """Headers as raw lines, for splicing into a response head."""
    return "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
