"""Ollama's server-side web search: a tool in the body that spends the owner's ollama.com account.
Pure logic: no asyncio.

Ollama 0.33's middleware runs a search on ollama.com, signed in as the
owner, whenever a model (a local one too) calls the tool, then up to 3
follow-up /api/chat rounds that Ollama sends to itself (they never pass the
gate), under their own 5-minute context.  So the tool is cloud use: only a
key with `cloud = true` (or an admin key) may declare it.

The rule is the middleware's, value for value: /v1/messages
(anthropic.go hasWebSearchTool) a tool whose "type" starts with
"web_search"; /v1/responses (openai/responses.go isWebSearchTool) a tool
whose "type" is exactly "web_search".  Values compare with case; member
names in any case, as Go's decoder reads them, and every copy of "tools"
and "type" counts, not only the last one Go keeps.
"""

from __future__ import annotations

from ..config.model import KeyEntry
from ..wire.errors import Forbidden
from . import routes
from .json_members import JsonObject, array_items
from .models import may_use_cloud

_SHOWN = 100
MAX_TOOLS = 1024  # tools in one body: more is refused rather than read (no client sends so many)
_TYPE = frozenset({"type"})


def may_declare(key: KeyEntry, route: routes.Route) -> bool:
    """True when no web-search tool needs looking for: the route has none, or the key may use the cloud."""
    return not route.web_search or may_use_cloud(key)


def could_declare(body: bytes | bytearray) -> bool:
    """False only when no tool type in the body can read as web_search (no such text, no \\u escape)."""
    return body.find(b"web_search") >= 0 or body.find(b"\\u") >= 0


def _is_web_search(rule: str, value: str) -> bool:
    return value.startswith("web_search") if rule == routes.WEB_SEARCH_PREFIX else value == "web_search"


def check(key: KeyEntry, route: routes.Route, body: JsonObject) -> None:
    """Forbidden, naming the tool, when the key may not have Ollama search the web."""
    if may_declare(key, route):
        return
    text = body.text
    for member in body.named("tools"):
        if text[member.value_start] != "[":
            continue  # null (no tools), or what Ollama refuses itself
        for at in array_items(text, member.value_start, MAX_TOOLS):
            if text[at] != "{":
                continue
            for m in JsonObject(text, at, _TYPE).named("type"):
                if isinstance(m.value, str) and _is_web_search(route.web_search, m.value):
                    raise Forbidden(f"this key may not use the web search tool {m.value[:_SHOWN]!r}: Ollama "
                                    f"runs it on the owner's ollama.com account (that needs cloud = true)")
