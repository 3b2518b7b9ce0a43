"""The body as a key may send it on: its model alias resolved, web search and placement options
refused, its GPU asks lowered.  Pure logic: no asyncio.

Runs before the policy's own body check (body_checks.py), which then reads
the body as forwarded: the key's `models` list and the cloud scope judge
the alias's target, and routing chooses a host by it.

A body that changes is encoded once again: every member is kept as the
client wrote it but those set here (json_members.py), in identity coding
(a zstd body is forwarded decompressed), with a Content-Length.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from ..config.model import KeyEntry
from ..wire.coding import decoded_body
from ..wire.errors import BadRequest
from ..wire.heads import RequestHead
from . import clamps, routes, web_search
from .aliases import Aliases
from .json_members import JsonObject, MergedObject


class Edited(NamedTuple):
    body: bytes | None = None   # the body to forward instead, when anything changed
    alias: str | None = None    # the model name asked for, when it was an alias (the body now names its target)
    clamped: tuple[str, ...] = ()  # the fields lowered or set (X-Guardproxy-Clamped, the log's "clamped")


UNCHANGED = Edited()
_JSON_MODEL = (routes.BODY, routes.BODY_OR_NAME)
# The top-level members whose values are read (as Go folds their names); the rest are skipped unread.
_READ = frozenset({"model", "name"}) | clamps.TOP_FIELDS


def needs_body(key: KeyEntry, route: routes.Route, aliases: Aliases) -> bool:
    """Whether this key's request on this route must be read whole for this step."""
    return bool((aliases and route.model in _JSON_MODEL)
                or not web_search.may_declare(key, route)
                or (route.options and not key.admin)
                or clamps.edits_body(key, route))


def edit_body(key: KeyEntry, route: routes.Route, req: RequestHead, body: bytes, aliases: Aliases) -> Edited:
    """The body as it goes on (see the module's text); Forbidden or BadRequest when it may not."""
    plain = decoded_body(body, req.get(b"content-encoding"), zstd_allowed=route.zstd)
    # (find, not `in`: bytes' `in` with a bytes operand costs half as much again per scan)
    escaped = plain.find(b"\\u") >= 0
    searching = not web_search.may_declare(key, route) and web_search.could_declare(plain)
    placing = route.options and not key.admin and (escaped or clamps.mentions_placement(plain))
    aliased = bool(aliases) and route.model in _JSON_MODEL
    if not (searching or placing or aliased or clamps.edits_body(key, route)):
        return UNCHANGED  # nothing here can be refused or changed: not parsed
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body must be UTF-8 JSON") from None
    doc = JsonObject(text, wanted=_READ)
    alias = _resolve_alias(route, doc, aliases) if aliased else None
    if searching:
        web_search.check(key, route, doc)
    options = MergedObject(doc, "options", clamps.READ_OPTIONS, folded_inner=False) if route.options else None
    if options is not None:
        clamps.check_placement(key, options)
    clamped = clamps.apply(key, route, doc, options)
    if not doc.changed:
        return UNCHANGED
    return Edited(doc.document().encode("utf-8"), alias, tuple(clamped))


def _resolve_alias(route: routes.Route, doc: JsonObject, aliases: Aliases) -> str | None:
    """Rewrite the body's model when it names an alias; the name asked for, or None."""
    field = "model"
    found = doc.named(field)
    if route.model == routes.BODY_OR_NAME and not any(m.value for m in found):
        field, found = "name", doc.named("name")
    if not found:
        return None
    values = {m.value if isinstance(m.value, str) else repr(m.value) for m in found}
    if len(values) > 1:
        raise BadRequest(f"request body sets {field!r} more than once")
    asked = found[-1].value
    if not isinstance(asked, str):
        return None
    target = aliases.target(asked)
    if target is None:
        return None
    doc.set(field, json.dumps(target))
    return asked
