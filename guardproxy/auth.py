"""Who is asking: an API key from X-API-Key or Authorization: Bearer.

Keys are looked up by their SHA-256, so the table never holds a key and the
comparison never runs over secret bytes.  Every failure is the same
Unauthorized, so a client cannot tell a wrong key from a malformed header.
Pure logic: no asyncio.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from .config import KeyEntry
from .errors import Unauthorized
from .heads import RequestHead

MAX_KEY_LENGTH = 512


class KeyRing:
    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        self._by_hash = {e.sha256: e.name for e in entries}

    def authenticate(self, req: RequestHead) -> str:
        """The key's name, or raise Unauthorized."""
        api_keys = []
        bearer = []
        for name, _, value in req.headers:
            if name == b"x-api-key":
                api_keys.append(value)
            elif name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    bearer.append(token.strip())
        # X-API-Key wins when both are sent; more than one of a kind is ambiguous.
        candidates = api_keys or bearer
        presented = candidates[0] if len(candidates) == 1 else None
        if presented is None or not presented or len(presented) > MAX_KEY_LENGTH:
            raise Unauthorized()
        name = self._by_hash.get(hashlib.sha256(presented).digest())
        if name is None:
            raise Unauthorized()
        return name
