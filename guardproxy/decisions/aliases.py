"""Model aliases ([aliases]): a name clients ask for, and the model that runs.  Pure logic: no asyncio.

An OpenAI-SDK app with "gpt-4o-mini" written into it runs on "llama3.2:3b":
the body's model is rewritten before any check, so a key's `models` list
and the cloud scope judge the target, and Ollama only ever sees the target.
Names match as Ollama's do: in any letter case, "library/" and the default
registry left out, "latest" as the default tag.  Model lists gain an entry
under each alias whose target the key may use.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from ..config.model import KeyEntry
from .models import canonical, entry_name, is_cloud, may_use_cloud, model_allowed, tagged

Pairs = tuple[tuple[str, str], ...]


def _key(name: str) -> str:
    return tagged(canonical(name))


class Aliases:
    def __init__(self, pairs: Pairs) -> None:
        self.pairs = pairs
        self._by_name = {_key(alias): target for alias, target in pairs}

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def target(self, name: str) -> str | None:
        """The model an alias stands for; None when `name` is no alias."""
        if not self._by_name or len(name) > 1024:
            return None
        return self._by_name.get(_key(name))

    def usable_by(self, key: KeyEntry) -> list[tuple[str, str]]:
        """The (alias, target) pairs whose target this key may use."""
        cloud = may_use_cloud(key)
        return [(a, t) for a, t in self.pairs if model_allowed(key.models, t) and (cloud or not is_cloud(t))]


@lru_cache(maxsize=8)  # one per config read: [aliases] changes only with a reload
def table(pairs: Pairs) -> Aliases:
    return Aliases(pairs)


def add_to_listing(path: bytes, key: KeyEntry, body: bytes, aliases: Aliases) -> bytes:
    """A /api/tags or /v1/models body with an entry for every alias the key may use.

    The entry is the target's own, renamed, when the list holds the target;
    else a bare one (an alias names what the owner meant to run, listed or not).
    """
    usable = aliases.usable_by(key)
    if not usable:
        return body
    data = json.loads(body)
    v1 = path == b"/v1/models"
    field, name_of = ("data", _v1_id) if v1 else ("models", entry_name)
    entries = data.get(field)
    if not isinstance(entries, list):
        entries = data[field] = []
    by_name: dict[str, dict[str, Any]] = {}
    for e in entries:
        if isinstance(e, dict):
            by_name.setdefault(_key(name_of(e)), e)
    for alias, target in usable:
        if _key(alias) in by_name:
            continue  # a model of that name is listed already (the alias still decides what runs)
        found = by_name.get(_key(target))
        if v1:
            entry = dict(found) if found else {"object": "model", "created": 0, "owned_by": "library"}
            entry["id"] = alias
        else:
            entry = dict(found) if found else {"modified_at": "1970-01-01T00:00:00Z", "size": 0, "digest": "",
                                               "details": {}}
            entry["name"] = entry["model"] = alias
        entries.append(entry)
        by_name[_key(alias)] = entry
    return json.dumps(data, separators=(",", ":")).encode()


def _v1_id(entry: dict[str, Any]) -> str:
    return str(entry.get("id") or "")
