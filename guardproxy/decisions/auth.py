"""Who is asking: an API key from X-API-Key or Authorization: Bearer.

Keys are looked up by their SHA-256, so the table never holds a key and the
comparison never runs over secret bytes.  Every failure is the same
Unauthorized, so a client cannot tell a wrong key from a malformed header.
Pure logic: no asyncio.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timezone
from typing import Iterable

from ..config.model import KeyEntry
from ..wire.errors import Unauthorized
from ..wire.heads import RequestHead

MAX_KEY_LENGTH = 512


class KeyRing:
    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        self._by_hash = {e.sha256: e for e in entries}

    def identify(self, req: RequestHead, today: date | None = None) -> KeyEntry:
        """The key's entry, or raise Unauthorized (an expired key is the same as an unknown one)."""
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
        entry = self._by_hash.get(hashlib.sha256(presented).digest())
        if entry is None:
            raise Unauthorized()
        if entry.expires is not None:
            if today is None:
                today = datetime.now(timezone.utc).date()
            if today > entry.expires:
                raise Unauthorized()
        return entry
