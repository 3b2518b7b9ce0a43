"""Request-body content codings guardproxy must see through to check a body.  Pure logic: no asyncio.

Ollama decompresses a `Content-Encoding: zstd` body on its /v1 JSON routes
(OpenAI's Codex sends them) before it reads the model, so a check must read
the same bytes: decompressed with Ollama's own bounds (an 8 MiB window, at
most 20 MiB out).  Any other coding is one guardproxy cannot check; the body
is refused rather than forwarded unchecked.
"""

from __future__ import annotations

import io

import zstandard

from .errors import BadRequest, GuardError, PayloadTooLarge

MAX_DECODED = 20 * 1024 * 1024   # Ollama's maxDecompressedBodySize
MAX_WINDOW = 8 * 1024 * 1024     # Ollama's zstd.WithDecoderMaxMemory


class UnsupportedCoding(GuardError):
    status = 415
    message = "unsupported Content-Encoding: send the body uncompressed (or zstd on /v1 routes)"
    close = True


def decoded_body(body: bytes, coding: bytes | None, *, zstd_allowed: bool) -> bytes | bytearray:
    """The body as Ollama will read it; 415 for a coding it would not decode here."""
    if coding is None or coding == b"":
        return body
    # Ollama compares the header with "zstd" exactly; anything else reaches its JSON decoder as is.
    if coding != b"zstd" or not zstd_allowed:
        raise UnsupportedCoding()
    # Across frames, as Go's decoder reads a stream of concatenated frames.  The bytearray is
    # returned as it is: a copy would double the memory a 20 MiB body costs.
    reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(io.BytesIO(body),
                                                                                  read_across_frames=True)
    out = bytearray()
    try:
        declared = zstandard.frame_content_size(body)
        if 0 < declared <= MAX_DECODED:
            # The first frame says its size: decode into exactly that much (no growth, no copies).
            out = bytearray(declared)
            with memoryview(out) as view:
                filled = 0
                while filled < declared:
                    got = reader.readinto(view[filled:])
                    if not got:
                        break
                    filled += got
            del out[filled:]
        while len(out) <= MAX_DECODED:  # (further frames)
            piece = reader.read(min(1 << 20, MAX_DECODED + 1 - len(out)))
            if not piece:
                break
            out += piece
    except zstandard.ZstdError:
        raise BadRequest("failed to decompress zstd body") from None
    if len(out) > MAX_DECODED:
        raise PayloadTooLarge("decompressed request body too large")
    return out
