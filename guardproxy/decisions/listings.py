"""Model lists of several Ollama hosts merged into one answer.  Pure logic: no asyncio."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping

from .models import entry_name
from .routing import canonical_model


def merge_tags(lists: Iterable[Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """/api/tags `models` of several hosts, each model once (the first host's entry)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for entries in lists:
        for e in entries:
            key = canonical_model(entry_name(e))
            if key not in seen:
                seen.add(key)
                out.append(dict(e))
    return out


def merge_ps(per_host: Iterable[tuple[str, Iterable[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """/api/ps `models` of several hosts, each entry with its host's name in `upstream`.

    A model loaded on two hosts is listed twice: they are two loaded copies.
    """
    return [{**e, "upstream": name} for name, entries in per_host for e in entries]


def v1_models_from_tags(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """/v1/models `data` built from /api/tags entries as Ollama builds it, to answer from the snapshot."""
    out: list[dict[str, Any]] = []
    for e in entries:
        name = entry_name(e)
        try:
            created = int(datetime.fromisoformat(str(e.get("modified_at"))).timestamp())
        except ValueError:
            created = 0
        out.append({"id": name, "object": "model", "created": created, "owned_by": _namespace(name)})
    return out


def _namespace(name: str) -> str:
    """The namespace part of host/namespace/model:tag, `library` when it is left out."""
    parts = name.split("/")
    return parts[-2] if len(parts) >= 2 else "library"
