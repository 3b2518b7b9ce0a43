"""Request heads: parsed once by h11, rebuilt as bytes for the upstream.

h11's validation is its main cost, so each head is parsed exactly once and the
upstream head is assembled from raw_items() rather than through a second h11
event.  Pure logic: no asyncio.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import h11

from .errors import BadRequest, GuardError, HeadTooLarge
from .strict import check_head, check_parsed

# Hop-by-hop headers (RFC 9110 7.6.1) plus the ones guardproxy owns: the
# client's key must never reach the upstream, Host is rewritten, and the
# forwarding headers are set by guardproxy alone so a client cannot forge them.
_DROP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
    b"proxy-authorization", b"http2-settings", b"expect",
    # The framing headers are written by guardproxy itself (build_upstream_head).
    b"content-length", b"transfer-encoding",
    b"x-api-key", b"authorization",
    b"host", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-real-ip", b"forwarded",
    # guardproxy answers CORS itself; Ollama answers 403 to origins outside OLLAMA_ORIGINS.
    b"origin",
    # Sent as the request's ID: the client's own when it is safe, else a new one.
    b"x-request-id",
    # An admin's choice of host is guardproxy's business alone.
    b"x-guardproxy-upstream",
})

# A client's X-Request-Id is kept when it is 1 to 64 of these (it goes into
# log lines and heads as it came); anything else gets a new ID.
MAX_REQUEST_ID = 64
_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_id_bits = random.Random().getrandbits  # seeded from os.urandom


def new_request_id() -> bytes:
    """96 random bits as 24 hex characters.

    0.25-0.45 µs here, within the noise of a process prefix plus a counter,
    which would also tell every client how busy the gate is; 12 bytes of
    os.urandom cost 0.7-1.2 µs.  An ID has to be unique, not secret
    (benchmarks/metrics_cost.py).
    """
    return b"%024x" % _id_bits(96)


# guardproxy answers Expect: 100-continue itself, once the checks have passed.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# The field list of a request whose upstream head is built already (Exchange.upstream_head): shared,
# never appended to.
NO_FIELDS: list[tuple[bytes, bytes, bytes]] = []


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes, bytes]]  # (name as sent, lower-case name, value): h11's own list, kept
    keep_alive: bool
    content_length: int | None
    chunked: bool
    expect_continue: bool
    host: bytes
    connection: frozenset[bytes]  # the Connection header's tokens, lower case: fields not to forward
    request_id: bytes | None = None  # the client's X-Request-Id, if it is a safe one

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]

    def get(self, name: bytes) -> bytes | None:
        for _, lname, value in self.headers:
            if lname == name:
                return value
        return None

    def with_length(self, length: int) -> "RequestHead":
        """The same request framed with a Content-Length, for a body that has been read already."""
        headers = [h for h in self.headers if h[1] not in (b"content-length", b"transfer-encoding")]
        headers.append((b"Content-Length", b"content-length", b"%d" % length))
        return RequestHead(self.method, self.target, self.http_version, headers, self.keep_alive,
                           length, False, False, self.host, self.connection, self.request_id)

    def without(self, name: bytes) -> "RequestHead":
        """The same request without the header fields called `name` (lower case)."""
        return RequestHead(self.method, self.target, self.http_version,
                           [h for h in self.headers if h[1] != name], self.keep_alive,
                           self.content_length, self.chunked, self.expect_continue, self.host, self.connection,
                           self.request_id)


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def _h11_public(data: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes, bytes]]]:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(data) + 1)
    conn.receive_data(data)
    event = conn.next_event()
    if not isinstance(event, h11.Request):
        raise BadRequest("malformed request head")
    return (event.method, event.target, event.http_version,
            [(r, n, v) for (n, v), (r, _) in zip(event.headers, event.headers.raw_items())])


try:
    # h11's own request-line and field parser, without the Connection state
    # machine around it: h11 validates every byte the same way, for 6 µs less
    # per head.  Internal to h11, so a release that moves it falls back on
    # the public path (the tests run both).
    from h11._readers import maybe_read_from_IDLE_client as _read_request
    from h11._receivebuffer import ReceiveBuffer as _ReceiveBuffer

    def _h11_fast(data: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes, bytes]]]:
        buf = _ReceiveBuffer()
        buf += data
        event = _read_request(buf)
        if not isinstance(event, h11.Request) or len(buf):
            raise BadRequest("malformed request head")
        # h11's own list of (name as sent, lower-case name, value), kept as it is: a stream holds its
        # request head as long as it runs, and a copy of the list would be 0.4 KiB more per stream.
        return event.method, event.target, event.http_version, event.headers._full_items

    _h11_parse = _h11_fast
except ImportError:  # pragma: no cover - depends on the installed h11
    _h11_parse = _h11_public


# The fields parse_request_head notes: the request's own (connection, expect, x-request-id), then,
# from _ONCE on, those the strict rules allow once (host, content-length, transfer-encoding first).
_NOTED = {b"connection": 0, b"expect": 1, b"x-request-id": 2, b"host": 3, b"content-length": 4,
          b"transfer-encoding": 5, b"x-api-key": 6, b"authorization": 7}
_ONCE = 3


def parse_request_head(data: bytes | bytearray | memoryview) -> RequestHead:
    """Parse one complete request head, as strict.HeadScanner found it, or raise a GuardError.

    h11 parses it; strict.check_parsed passes it on h11's reading, or strict.check_head
    refuses what h11 would let through, so both parsers agree on every head that passes.
    Any bytes-like head is taken; the parsed fields are bytes (they are hashed and kept).
    """
    if type(data) is not bytes:
        data = bytes(data)
    try:
        method, target, version, headers = _h11_parse(data)
    except (h11.RemoteProtocolError, h11.LocalProtocolError) as e:
        check_head(data)  # the strict rules' reason first, as for any head they refuse
        err_cls = HeadTooLarge if e.error_status_hint == 431 else BadRequest
        raise err_cls(f"malformed request: {e}") from None
    # h11's field list is walked once: for what the request needs, and for the fields the
    # strict rules allow only once. Each line is thus scanned once, by h11; check_head reads
    # the lines again only when something is unusual, to refuse with its reason.
    keep_alive = version == b"1.1"
    expect = False
    request_id: bytes | None = None
    seen_id = False
    connection_tokens: list[bytes] = []
    once = 0           # bits of the fields seen that the strict rules allow once
    unusual = False    # something for check_head to judge
    found: list[bytes | None] = [None, None, None]  # host, content-length, transfer-encoding
    for raw, name, value in headers:
        # h11 takes "_" in a name; the strict rules do not. (An int: bytes' `in` with a bytes
        # operand first tries it as an int and fails, ten times the cost of this test.)
        if 0x5F in raw:
            unusual = True
        if name not in _NOTED:
            continue
        kind = _NOTED[name]
        if kind >= _ONCE:
            bit = 1 << kind
            if once & bit:
                unusual = True
            once |= bit
            if kind < _ONCE + 3:
                found[kind - _ONCE] = value
        elif kind == 0:
            connection_tokens.extend(_tokens(value))
        elif kind == 1:
            expect = value.lower() == b"100-continue"
        elif not seen_id:  # the first X-Request-Id counts, as Go's Header.Get reads it
            seen_id = True
            if 0 < len(value) <= MAX_REQUEST_ID and not value.translate(None, _ID_CHARS):
                request_id = value
    host, cl, te = found
    facts = None if unusual else check_parsed(data, method, target, version, host, cl, te)
    if facts is None:
        facts = check_head(data)
    if b"close" in connection_tokens:
        keep_alive = False
    elif version == b"1.0" and b"keep-alive" in connection_tokens:
        keep_alive = True
    return RequestHead(method, target, version, headers, keep_alive, facts.content_length, facts.chunked,
                       expect, host or b"", frozenset(connection_tokens), request_id)


def build_upstream_head(req: RequestHead, authority: bytes, client_ip: bytes, proto: bytes,
                        request_id: bytes) -> bytes:
    """The head sent to the upstream: our Host, forwarding headers and request ID, no secrets.

    Never a copy of the client's bytes: every line is written here with CRLF,
    and the body framing is guardproxy's own (one Content-Length, or chunked
    that the relay re-frames), so the upstream cannot read the message
    differently from the way guardproxy did.
    """
    listed = req.connection
    # An HTTP/1.0 client cannot read a chunked response, so ask the upstream
    # in its version; the upstream then frames the body in a way it can read.
    version = b"HTTP/1.0" if req.http_version == b"1.0" else b"HTTP/1.1"
    parts = [req.method, b" ", req.target, b" ", version, b"\r\nHost: ", authority, b"\r\n"]
    for raw_name, name, value in req.headers:
        if name in _DROP or name in listed:
            continue
        parts += (raw_name, b": ", value, b"\r\n")
    if req.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif req.content_length is not None:
        parts += (b"Content-Length: ", b"%d" % req.content_length, b"\r\n")
    if req.host:
        parts += (b"X-Forwarded-Host: ", req.host, b"\r\n")
    parts += (b"X-Forwarded-For: ", client_ip, b"\r\nX-Forwarded-Proto: ", proto,
              b"\r\nX-Real-IP: ", client_ip, b"\r\nX-Request-Id: ", request_id, b"\r\n\r\n")
    return b"".join(parts)


# --- response heads from the upstream ------------------------------------------

class BadUpstreamHead(GuardError):
    status = 502
    message = "upstream sent an invalid response"


# The status line is copied to the client, so a CR, LF or other control byte
# in the reason phrase would let the upstream split the client's response.
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_RESP_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"})


@dataclass(slots=True)
class ResponseHead:
    status: int
    head: bytes                 # the head to send to the client
    content_length: int | None  # None: chunked, close-delimited or no body
    chunked: bool
    no_body: bool               # HEAD request, 1xx, 204, 304
    close_client: bool          # the client connection must close after this response
    upstream_keep_alive: bool


def parse_response_head(data: bytes | bytearray | memoryview, *, head_request: bool, client_keep_alive: bool,
                        extra: bytes = b"") -> ResponseHead:
    """Parse the upstream's response head (ending in CRLF CRLF) and rebuild the client's copy.

    The status line and end-to-end headers pass unchanged; hop-by-hop headers
    are the upstream connection's own business.  Contradictory framing is
    refused: a proxy that guesses here is how responses get smuggled.
    Any bytes-like head is taken (Windows' proactor loop reads into a bytearray):
    its names are looked up in frozensets, so they must be bytes.
    """
    if type(data) is not bytes:
        data = bytes(data)
    text = data[:-4]
    # One search for the whole head: a control byte anywhere but in the CRLF between lines (a line
    # split on CRLF holds one exactly where the head with every CRLF taken out does).
    if _BAD_REASON.search(text.replace(b"\r\n", b"")):
        raise BadUpstreamHead()
    lines = text.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() \
            or rest[3:4] not in (b"", b" "):
        raise BadUpstreamHead()
    status = int(code)
    keep_alive = version == b"HTTP/1.1"
    content_length: int | None = None
    chunked = False
    out = [b"HTTP/1.1 ", rest, b"\r\n"]
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        # (a line folded onto the one before starts with a space or a tab: its name is not stripped)
        if not sep or not name or name != name.strip():
            raise BadUpstreamHead()
        lname = name.lower()
        value = value.strip()
        if lname in _RESP_DROP:
            if lname == b"connection":
                toks = _tokens(value)
                if b"close" in toks:
                    keep_alive = False
                elif b"keep-alive" in toks and version == b"HTTP/1.0":
                    keep_alive = True
            continue
        if lname.startswith(b"access-control-") or lname == b"x-request-id":
            continue  # guardproxy's own CORS headers and request ID (in `extra`) replace the upstream's
        if lname == b"content-length":
            if not value.isdigit() or len(value) > 18 or (content_length is not None and content_length != int(value)):
                raise BadUpstreamHead()
            content_length = int(value)
        elif lname == b"transfer-encoding":
            if _tokens(value) != [b"chunked"] or chunked:
                raise BadUpstreamHead()
            chunked = True
        out += (line, b"\r\n")
    if chunked and content_length is not None:
        raise BadUpstreamHead()
    no_body = head_request or status < 200 or status in (204, 304)
    close_delimited = not no_body and not chunked and content_length is None
    if close_delimited:
        keep_alive = False
    close_client = not client_keep_alive or close_delimited
    if extra:
        out.append(extra)
    if close_client:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    return ResponseHead(status, b"".join(out), content_length, chunked, no_body, close_client, keep_alive)
