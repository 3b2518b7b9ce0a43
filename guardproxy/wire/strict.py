"""Strict request-head rules: where h11 is lenient, guardproxy is not.

h11 accepts things nginx, HAProxy and Envoy refuse (both Content-Length and
Transfer-Encoding, obs-fold, bare LF, control bytes in values, HTTP/2.0 in a
request line, absolute-form targets, ...).  Each of those is a way for two
HTTP parsers to disagree about where a request ends, which is how requests
get smuggled.  This module checks the raw bytes before h11 sees them:

* HeadScanner finds the end of a head while it arrives, enforcing the size,
  line-ending and header-count limits whatever the segmentation.
* check_parsed passes a head on h11's reading of it plus two looks at the raw
  bytes: the common case, each line scanned once (by h11).
* check_head validates the raw head line by line: the verdict, with its status
  and reason, for every head check_parsed does not pass.

Every violation raises a GuardError carrying its status; all of them close
the connection.  Pure logic: no asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from ..config.model import ServerLimits
from .errors import BadRequest, HeadTooLarge, MethodNotAllowed, NotImplementedCoding, UriTooLong, VersionNotSupported

MAX_REQUEST_LINE = 8192   # 414 beyond this (nginx: large_client_header_buffers 8k)
MAX_HEAD = 16384          # 431 beyond this, however the head is split into reads
# The configurable limits' defaults live in one place, the config's dataclasses.
MAX_HEADERS = ServerLimits.max_headers  # 431 beyond this (Apache LimitRequestFields)
ALLOWED_METHODS = (b"GET", b"HEAD", b"POST", b"DELETE", b"OPTIONS")
ALLOW_HEADER = ", ".join(m.decode() for m in ALLOWED_METHODS)


def _bad(message: str) -> BadRequest:
    return BadRequest(message)


# RFC 9110 5.6.2 tchar, minus "_": nginx and Apache drop underscore names by
# default, and a proxy that keeps them lets X_API_KEY pose as X-API-Key to an
# upstream that maps both to the same variable (CGI-style frameworks do).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^`|~0-9A-Za-z]+")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# origin-form (RFC 9112 3.2.1): "/" then pchar, "/", "?" and %XX only.
# No "#", "\", spaces, quotes, braces or raw bytes >= 0x80.
_ORIGIN_FORM = re.compile(rb"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_HOST = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*(?::[0-9]*)?|\[[0-9A-Fa-f:.]+\](?::[0-9]*)?")
# One match per field line: token name, colon, OWS, then a value without
# control bytes (CR, LF and NUL included).  Anything else is diagnosed by
# _field_error, off the fast path.
_FIELD = re.compile(rb"([!#$%&'*+\-.^`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)")
_UNIQUE = frozenset({b"host", b"content-length", b"transfer-encoding", b"x-api-key", b"authorization"})


def _field_error(line: bytes) -> NoReturn:
    if b"\r" in line:
        raise _bad("bare CR in header field")
    if line[:1] in (b" ", b"\t"):
        raise _bad("obsolete line folding")
    name, colon, _ = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise _bad("malformed header field name")
    raise _bad("control character in header field value")


class HeadScanner:
    """Finds where a request head ends as bytes arrive, refusing early.

    feed() is given the whole buffer each time (it remembers how far it has
    looked) and returns the length of the complete head, or -1 to wait for
    more.  A bare LF, an over-long request line, too many lines or too many
    bytes are refused as soon as they are seen, not when a CRLF CRLF shows up.
    """

    __slots__ = ("pos", "start", "lines", "max_headers")

    def __init__(self, max_headers: int = MAX_HEADERS) -> None:
        self.pos = 0        # start of the line not yet complete
        self.start = 0      # where the request line starts (after ignored empty lines)
        self.lines = 0      # complete lines seen (request line included)
        self.max_headers = max_headers

    def feed(self, buf: bytes | bytearray) -> int:
        pos = self.pos
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                pending = len(buf) - pos
                if self.lines == 0 and pending > MAX_REQUEST_LINE + 1:
                    raise UriTooLong()
                if len(buf) > MAX_HEAD:
                    raise HeadTooLarge()
                self.pos = pos
                return -1
            if nl == 0 or buf[nl - 1] != 0x0D:
                raise _bad("bare LF in request head")
            if self.lines == 0 and nl - 1 - pos > MAX_REQUEST_LINE:
                raise UriTooLong()
            if nl + 1 > MAX_HEAD:
                raise HeadTooLarge()
            if nl - 1 == pos:  # an empty line
                if self.lines == 0:
                    # RFC 9112 2.2: empty lines before a request line are ignored.
                    pos = self.start = nl + 1
                    continue
                return nl + 1
            self.lines += 1
            if self.lines > self.max_headers + 1:
                raise HeadTooLarge("too many header fields")
            pos = nl + 1


@dataclass(slots=True)
class HeadFacts:
    """What the strict check learned; the parser uses it instead of guessing."""

    content_length: int | None
    chunked: bool


def check_head(data: bytes) -> HeadFacts:
    """Validate one complete request head, as HeadScanner found it, or raise a GuardError.

    The scanner has checked the line endings, the sizes and the field count
    as the bytes arrived; this checks the rest.  The order decides which
    status a head with several faults gets: syntax first (400), then the
    version (505), then framing (400/501), then target form (400) and
    method (405).  The body size is the route's to judge.
    """
    lines = data[:-4].split(b"\r\n")
    request_line = lines[0]
    if b"\r" in request_line:
        raise _bad("bare CR in request line")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise _bad("malformed request line")
    method, target, version = parts
    if not _METHOD.fullmatch(method):
        raise _bad("malformed method")
    vm = _VERSION.fullmatch(version)
    if vm is None:
        raise _bad("malformed HTTP version")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise VersionNotSupported()

    seen: dict[bytes, bytes] = {}
    for line in lines[1:]:
        m = _FIELD.fullmatch(line)
        if m is None:
            _field_error(line)
        lname = m.group(1).lower()
        if lname in _UNIQUE:
            name = m.group(1)
            value = m.group(2).rstrip(b" \t")
            if lname in seen:
                raise _bad(f"duplicate {name.decode('latin-1')} header")
            seen[lname] = value

    content_length: int | None = None
    cl = seen.get(b"content-length")
    te = seen.get(b"transfer-encoding")
    if cl is not None:
        if not cl.isdigit() or len(cl) > 18:
            raise _bad("invalid Content-Length")
        content_length = int(cl)
    chunked = False
    if te is not None:
        if version == b"HTTP/1.0":
            raise _bad("Transfer-Encoding in an HTTP/1.0 request")
        if cl is not None:
            raise _bad("both Content-Length and Transfer-Encoding")
        codings = [c.strip(b" \t").lower() for c in te.split(b",")]
        if not all(codings) or not all(_TOKEN.fullmatch(c) for c in codings):
            raise _bad("malformed Transfer-Encoding")
        if codings.count(b"chunked") > 1:
            raise _bad("chunked applied more than once")
        if codings != [b"chunked"]:
            raise NotImplementedCoding()
        chunked = True
    if version == b"HTTP/1.1" and b"host" not in seen:
        raise _bad("missing Host header")
    host = seen.get(b"host")
    if host is not None and not _HOST.fullmatch(host):
        raise _bad("invalid Host header")

    if target == b"*":
        if method != b"OPTIONS":
            raise _bad("asterisk-form is only for OPTIONS")
    elif not _ORIGIN_FORM.fullmatch(target):
        raise _bad("request target must be an absolute path")
    if method not in ALLOWED_METHODS:
        raise MethodNotAllowed(headers=[("Allow", ALLOW_HEADER)], close=True)
    return HeadFacts(content_length, chunked)



# Every control byte but TAB, CR and LF becomes NUL, so one find tells whether a head has any.
_CONTROL_TO_NUL = bytes(0 if (b < 0x20 and b not in (0x09, 0x0A, 0x0D)) or b == 0x7F else b for b in range(256))
# origin-form's characters apart from %XX: a target without "%" is checked by one translate.
_ORIGIN_CHARS = bytes(sorted(set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?")))


def check_parsed(data: bytes, method: bytes, target: bytes, version: bytes,
                 host: bytes | None, content_length: bytes | None, transfer_encoding: bytes | None) -> HeadFacts | None:
    """The facts of a head that check_head would pass, from h11's parse of it; None: ask check_head.

    The caller has walked h11's fields once: no name with "_", no field of _UNIQUE twice,
    and the values of Host, Content-Length and Transfer-Encoding. h11 has already refused
    control bytes, bare CR, malformed names and request lines, and codings other than
    chunked. What h11 allows and the strict rules do not is looked for here; anything
    unusual returns None, so that check_head, the authority, gives the verdict and its
    reason. A sufficient condition, never a second set of rules: whatever it passes,
    check_head passes with the same facts (tests/unit/wire/test_strict.py holds the two to
    that on the attack corpus and on random heads).
    """
    if version != b"1.1" and version != b"1.0":
        return None
    if method not in ALLOWED_METHODS:
        return None
    if target == b"*":
        if method != b"OPTIONS":
            return None
    elif target[:1] != b"/" or (target.translate(None, _ORIGIN_CHARS) if 0x25 not in target  # "%"
                                 else not _ORIGIN_FORM.fullmatch(target)):
        return None
    # h11 unfolds obsolete line folding and takes control bytes other than NUL in a value;
    # the strict rules refuse both. (find, not `in`: see heads.parse_request_head on the
    # cost of bytes' `in` with a bytes operand.)
    if data.find(b"\n ") >= 0 or data.find(b"\n\t") >= 0 or data.translate(_CONTROL_TO_NUL).find(0) >= 0:
        return None
    cl = content_length
    if cl is not None:
        # h11 folds repeated equal Content-Lengths, and "5, 5", into one: the raw bytes must hold exactly one.
        lowered = data.lower()
        at = lowered.find(b"\r\ncontent-length:")
        if at < 0 or lowered.find(b"\r\ncontent-length:", at + 17) >= 0:
            return None
        start = at + 17
        if data[start:data.find(b"\r", start)].strip(b" \t") != cl or len(cl) > 18:
            return None
    if transfer_encoding is not None and (cl is not None or version == b"1.0"):
        return None
    if host is None:
        if version == b"1.1":
            return None
    elif not _HOST.fullmatch(host):
        return None
    return HeadFacts(int(cl) if cl is not None else None, transfer_encoding is not None)
