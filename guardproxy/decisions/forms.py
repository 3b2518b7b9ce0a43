"""The model of a multipart form (/v1/audio/transcriptions), in a strict subset of Go's reading.  Pure.

Ollama calls net/http's FormValue("model"): mime.ParseMediaType on the
Content-Type, then mime/multipart.  Both are lenient in ways a second
reader cannot follow safely: ParseMediaType honours RFC 2231 continuations
(`boundary*0=...` replaces `boundary`), the multipart reader switches to
bare-LF lines when the first boundary line ends in LF, skips a preamble,
ignores an epilogue, accepts padding after a delimiter, decodes
quoted-printable parts, and FormValue prefers the query's value.  So this
reader accepts only forms where none of that can matter:

- Content-Type `multipart/form-data` with exactly one `boundary` parameter
  and no parameter with `*` in its name (nor any repeated);
- the body opens with the first delimiter line, every line of the form's
  framing ends in CRLF, every delimiter is followed by CRLF or is the close
  delimiter, and after that nothing but one optional CRLF;
- part headers are plain `Name: value` lines, no Content-Transfer-Encoding;
- exactly one part named `model` (no filename), valid UTF-8; a `model` in
  the query, if any, says the same.

Anything else is 400 with a one-line reason.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from ..wire.errors import BadRequest

MAX_PARTS = 64  # a transcription has a file and a few fields
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rb";[ \t]*(" + _TOKEN + rb")=(" + _TOKEN + rb'|"[^"\\\x00-\x1f\x7f]*")[ \t]*')
_MEDIA = re.compile(rb"[ \t]*(" + _TOKEN + rb"(?:/" + _TOKEN + rb")?)[ \t]*")
_HEADER = re.compile(rb"([A-Za-z0-9-]+):[ \t]*([^\r\n]*?)[ \t]*")
# RFC 2046's boundary characters (without the space it allows inside).
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,./:=?-]{1,70}")
_QUERY_PAIR = re.compile(r"[^&=]*(?:=[^&]*)?")


class BadForm(BadRequest):
    message = "malformed multipart form"


def media_params(value: bytes | bytearray, what: str,
                 extended: frozenset[str] = frozenset()) -> tuple[str, dict[str, str]]:
    """The lowercased type and the parameters of a Content-Type or Content-Disposition value.
    A parameter with `*` in its name (RFC 2231, which Go decodes and lets replace the plain one)
    is refused unless it extends one of `extended`."""
    m = _MEDIA.match(value)
    if m is None:
        raise BadRequest(f"malformed {what}")
    params: dict[str, str] = {}
    pos = m.end()
    while pos < len(value):
        p = _PARAM.match(value, pos)
        if p is None:
            raise BadRequest(f"malformed {what}")
        name, v = p.group(1).decode("ascii").lower(), p.group(2).decode("latin-1")
        if "*" in name and name.partition("*")[0] not in extended:
            raise BadRequest(f"{what} parameter {name!r} not accepted (RFC 2231 parameters are read differently)")
        if name in params:
            raise BadRequest(f"{what} repeats parameter {name!r}")
        params[name] = v[1:-1] if v.startswith('"') else v
        pos = p.end()
    return m.group(1).decode("ascii").lower(), params


def _query_models(target: bytes) -> list[str]:
    query = target.partition(b"?")[2].decode("latin-1")
    if not query:
        return []
    if ";" in query or re.search(r"%(?![0-9A-Fa-f]{2})", query):
        raise BadRequest("malformed query string")  # Go skips such pairs; Python would keep them
    out = []
    for pair in query.split("&"):
        k, _, v = pair.partition("=")
        if unquote_plus(k) == "model":
            out.append(unquote_plus(v, errors="strict"))
    return out


def form_model(body: bytes | bytearray, content_type: bytes | None, target: bytes) -> str:
    """The model Ollama's FormValue("model") returns; BadRequest for a form outside the grammar."""
    kind, params = media_params(content_type or b"", "Content-Type")
    if kind != "multipart/form-data":
        raise BadRequest("request body must be a multipart form")
    boundary = params.get("boundary", "").encode("ascii")
    if not _BOUNDARY.fullmatch(boundary):
        raise BadRequest("multipart boundary must be 1 to 70 of RFC 2046's characters")
    first = b"--" + boundary + b"\r\n"
    if not body.startswith(first):
        raise BadForm("multipart form must open with its boundary line, ended by CRLF")
    delim = b"\r\n--" + boundary
    models: list[bytes | bytearray] = []
    pos = len(first)
    parts = 0
    while True:
        end = body.find(delim, pos)
        if end < 0:
            raise BadForm("multipart form has no close delimiter")
        parts += 1
        if parts > MAX_PARTS:
            raise BadForm(f"multipart form has more than {MAX_PARTS} parts")
        value = _part_model(body[pos:end], first[:-2])
        if value is not None:
            models.append(value)
        after = end + len(delim)
        tail = body[after:after + 2]
        if tail == b"\r\n":
            pos = after + 2
            continue
        if tail == b"--" and body[after + 2:] in (b"", b"\r\n"):
            break
        raise BadForm("multipart delimiter must be followed by CRLF, or close the form and end it")
    if len(models) != 1:
        raise BadRequest("multipart form must have exactly one 'model' part")
    try:
        model = models[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("model must be UTF-8") from None
    for other in _query_models(target):
        if other != model:
            raise BadRequest("request sets 'model' more than once")
    if not model:
        raise BadRequest("request body must name a model")
    return model


def _part_model(part: bytes | bytearray, dash_boundary: bytes) -> bytes | bytearray | None:
    """The content of a part named "model", else None (a part Go's FormValue would not read as it)."""
    head_end = part.find(b"\r\n\r\n")
    head: bytes | bytearray
    content: bytes | bytearray
    if part.startswith(b"\r\n"):
        head, content = b"", part[2:]
    elif head_end < 0:
        raise BadForm("multipart part headers must end with an empty CRLF line")
    else:
        head, content = part[:head_end], part[head_end + 4:]
    if content.startswith(dash_boundary):
        # Go takes "--boundary" at the very start of a part's content as a delimiter.
        raise BadForm("multipart part content must not start with the boundary")
    disposition: bytes | bytearray | None = None
    for line in head.split(b"\r\n") if head else ():
        m = _HEADER.fullmatch(line)
        if m is None:
            raise BadForm("malformed multipart part header (plain 'Name: value' lines ending in CRLF only)")
        name = m.group(1).lower()
        if name == b"content-transfer-encoding":
            raise BadRequest("multipart Content-Transfer-Encoding not accepted")
        if name == b"content-disposition":
            if disposition is not None:
                raise BadForm("multipart part has two Content-Disposition headers")
            disposition = m.group(2)
    if disposition is None:
        return None
    # A file part may carry an RFC 2231 filename (non-ASCII names); never an extended "name".
    kind, params = media_params(disposition, "Content-Disposition", frozenset({"filename"}))
    if params.get("name") != "model" or kind != "form-data":
        return None
    if any(k.partition("*")[0] == "filename" for k in params):
        raise BadRequest("multipart 'model' part must not carry a filename")
    return content
