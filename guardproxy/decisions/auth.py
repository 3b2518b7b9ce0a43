"""Who is asking: an API key from X-API-Key or Authorization: Bearer.

Keys are looked up by their SHA-256, so the table never holds a key and the
comparison never runs over secret bytes.  Every failure is the same
Unauthorized, so a client cannot tell a wrong key from a malformed header, an
expired key or a revoked one; only the access log names a known key that was refused.  Pure logic: no asyncio.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timezone
from typing import Iterable

from ..config.model import MAX_KEY_LENGTH, KeyEntry
from ..wire.errors import Unauthorized
from ..wire.heads import RequestHead

__all__ = ["MAX_KEY_LENGTH", "KeyRing", "key_state"]


def key_state(entry: KeyEntry, now: datetime) -> str:
    """"revoked", "expired", "rotating" (its previous key still works) or "active"."""
    if entry.revoked is not None:
        return "revoked"
    if entry.expires is not None and now.astimezone(timezone.utc).date() > entry.expires:
        return "expired"
    if _previous_valid(entry, now):
        return "rotating"
    return "active"


def _previous_valid(entry: KeyEntry, now: datetime) -> bool:
    return entry.previous_valid_until is not None and now < entry.previous_valid_until


class KeyRing:
    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        entries = tuple(entries)
        self._by_hash = {e.sha256: e for e in entries}
        self._by_name = {e.name: e for e in entries}
        # A current key always wins over another key's previous one.
        self._previous = {e.previous_sha256: e for e in entries
                          if e.previous_sha256 is not None and e.previous_sha256 not in self._by_hash}

    def identify(self, req: RequestHead, today: date | None = None, *, now: datetime | None = None) -> KeyEntry:
        """The key's entry, or raise Unauthorized.

        `now` (timezone-aware) decides whether a rotated key's previous value still
        works; `today` (UTC), taken from `now` when not given, decides expiry.
        """
        api_keys = []
        bearer = []
        for _, name, value in req.headers:
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
        digest = hashlib.sha256(presented).digest()
        entry = self._by_hash.get(digest)
        if entry is None:
            entry = self._previous.get(digest)
            if entry is None:
                raise Unauthorized()
            now = datetime.now(timezone.utc) if now is None else now
            if not _previous_valid(entry, now):
                raise Unauthorized.for_key(entry.name, "rotated")
        if entry.revoked is not None:
            raise Unauthorized.for_key(entry.name, "revoked")
        if entry.expires is not None:
            if today is None:
                today = (datetime.now(timezone.utc) if now is None else now).astimezone(timezone.utc).date()
            if today > entry.expires:
                raise Unauthorized.for_key(entry.name, "expired")
        return entry

    def recheck(self, entry: KeyEntry, today: date | None = None) -> None:
        """Raise Unauthorized unless the key identified as `entry` still may be used: a request that
        waited for a slot is decided again when it is woken, and a reload may have removed, revoked
        or replaced the key meanwhile."""
        current = self._by_name.get(entry.name)
        if current is None or entry.sha256 not in (current.sha256, current.previous_sha256):
            raise Unauthorized()
        if current.revoked is not None:
            raise Unauthorized.for_key(current.name, "revoked")
        if current.expires is not None:
            if today is None:
                today = datetime.now(timezone.utc).date()
            if today > current.expires:
                raise Unauthorized.for_key(current.name, "expired")
