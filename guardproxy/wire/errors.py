"""guardproxy's own error responses: refusals, and upstream failures before a response started.

Each GuardError carries its HTTP status (the way h11 carries
error_status_hint), so checks just raise, and `render` is the one place
an error becomes bytes.  The body is Ollama's own error shape,
{"error": "..."}, so Ollama clients show the message.
"""

from __future__ import annotations

import json
from typing import Iterable


class GuardError(Exception):
    status = 500
    message = "internal error"
    # Refusals that leave unread request bytes on the wire must close the
    # connection, so leftover body bytes are never parsed as a next request.
    close = False
    # The refusal's reason in the metrics when its status alone does not say it
    # (a ban and a rate limit are both 429); "" for the reason its status gives.
    reason = ""

    def __init__(self, message: str | None = None, *, headers: Iterable[tuple[str, str]] = (),
                 close: bool | None = None) -> None:
        if message is not None:
            self.message = message
        self.headers = tuple(headers)
        if close is not None:
            self.close = close
        super().__init__(self.message)


class BadRequest(GuardError):
    status = 400
    message = "bad request"
    close = True


class Unauthorized(GuardError):
    status = 401
    message = "unauthorized"
    # A configured key that may no longer be used: its name and why ("revoked", "expired", "rotated":
    # a rotated key's old value after its grace), for the access log only; the client sees the same 401.
    key_name: str | None = None
    key_state: str | None = None

    @classmethod
    def for_key(cls, name: str, state: str) -> "Unauthorized":
        err = cls()
        err.key_name, err.key_state = name, state
        return err


class Forbidden(GuardError):
    status = 403
    message = "forbidden"


class MethodNotAllowed(GuardError):
    status = 405
    message = "method not allowed"


class RequestTimeout(GuardError):
    status = 408
    message = "request timeout"
    close = True


class PayloadTooLarge(GuardError):
    status = 413
    message = "request body too large"
    close = True


class HeadTooLarge(GuardError):
    status = 431
    message = "request header fields too large"
    close = True


class UriTooLong(GuardError):
    status = 414
    message = "request line too long"
    close = True


class NotImplementedCoding(GuardError):
    status = 501
    message = "unsupported transfer coding"
    close = True


class VersionNotSupported(GuardError):
    status = 505
    message = "HTTP version not supported"
    close = True


class TooManyRequests(GuardError):
    status = 429
    message = "too many requests"


class BadGateway(GuardError):
    status = 502
    message = "upstream unavailable"


class ServiceUnavailable(GuardError):
    status = 503
    message = "service unavailable"


class GatewayTimeout(GuardError):
    status = 504
    message = "upstream timeout"


REASONS = {
    200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def response_head(status: int, headers: Iterable[tuple[str, str]], *, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def render(err: GuardError, *, close: bool = False, head_only: bool = False,
           extra_headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The bytes of the response for a refusal: JSON body, Content-Length."""
    body = json.dumps({"error": err.message}).encode()
    headers = [("Content-Type", "application/json; charset=utf-8"),
               ("Content-Length", str(len(body)))]
    headers.extend(err.headers)
    headers.extend(extra_headers)
    head = response_head(err.status, headers, close=close or err.close)
    return head if head_only else head + body
