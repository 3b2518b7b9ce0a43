"""Model lists (/api/tags, /api/ps, /v1/models) as a key may see them.

With several hosts the answer is the merged snapshot (health.listing), built
without a round trip while it is fresh; with one host, or one named by an
admin's X-Guardproxy-Upstream, it is that host's own answer.  Either way a
key with a model list sees only its models (models.filter_listing).
"""

from __future__ import annotations

import json
from typing import Protocol

from ..config.model import KeyEntry
from ..decisions import aliases, models
from ..decisions.listing_reader import ListingError
from ..wire.errors import BadGateway
from . import forwarding, health
from .relay import MAX_RESPONSE_HEAD
from .sinks import Collector

_PATHS = {"tags": b"/api/tags", "ps": b"/api/ps", "models": b"/v1/models"}  # by route name
_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"


class Lister(forwarding.Trip, Protocol):
    body_left: bool
    @property
    def extra_headers(self) -> bytes: ...
    def respond(self, status: int, head: bytes, body: bytes) -> bool: ...


async def merged(ex: Lister, key: KeyEntry, path: bytes) -> bool:
    """The hosts' lists merged, from the snapshot (503 when no host is up)."""
    path = _PATHS[ex.route.name]  # (/api/tags/ is /api/tags)
    hosts = ex.hosts
    raw = await health.listing(hosts, path)
    if key.models is not None or lists_aliases(ex):
        # Cut down once per model list and snapshot (hosts.listings is emptied when the snapshot changes).
        table = aliases.table(ex.config.aliases)
        seen_as = (path, key.models, models.may_use_cloud(key)) + ((table.pairs,) if table else ())
        cut = hosts.listings.get(seen_as)
        if cut is None:
            cut = hosts.listings[seen_as] = _as_seen_by(path, key, raw, table)
        raw = cut
    return ex.respond(200, _JSON + ex.extra_headers, raw)


def lists_aliases(ex: Lister) -> bool:
    """A list that names [aliases] too (/api/tags, /v1/models; not /api/ps, which shows what runs)."""
    return bool(ex.config.aliases) and ex.route.name in ("tags", "models")


def _as_seen_by(path: bytes, key: KeyEntry, raw: bytes, table: aliases.Aliases) -> bytes:
    """The list with the key's models only, and the aliases it may use."""
    if key.models is not None:
        raw = models.filter_listing(path, key, raw)
    if table and path in (b"/api/tags", b"/v1/models"):
        raw = aliases.add_to_listing(path, key, raw, table)
    return raw


async def _untrusted_as_seen_by(path: bytes, key: KeyEntry, raw: bytes, table: aliases.Aliases) -> bytes:
    """_as_seen_by for a host's own list, which is untrusted: read within bounds and a slice at a
    time (health.read_entries), then rebuilt; 502 if it cannot be read."""
    field = "data" if path == b"/v1/models" else "models"
    try:
        entries = await health.read_entries(raw, field)
    except ListingError:
        raise BadGateway("upstream sent an unreadable model list") from None
    if key.models is not None:
        entries = models.visible_entries(path, key, entries)
    doc = {"object": "list", "data": entries} if field == "data" else {"models": entries}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    if table and path in (b"/api/tags", b"/v1/models"):
        raw = aliases.add_to_listing(path, key, raw, table)
    return raw


async def filtered(ex: Lister, key: KeyEntry, path: bytes, host_name: str | None) -> bool:
    """A host's model list, fetched whole through its pool (it is small) and cut down to the key's models."""
    req = ex.req
    assert req is not None
    ex.member, ex.wanted = ex.hosts.first(ex.route, None, host_name)  # (a listing never waits)
    ex.req = req.without(b"accept-encoding")  # identity encoding: the body is read as JSON here
    if ex.body_left:  # a GET's body is not forwarded: announced, it would hold the host waiting for it
        ex.req = ex.req.with_length(0)  # (and the connection closes after the answer)
    collector = Collector(health.MAX_LISTING + MAX_RESPONSE_HEAD, BadGateway("upstream model list too large"))
    upstream, reusable, _ = await forwarding.relay(ex, b"", collector, keep_alive=True, extra=b"",
                                                   stream_body=False)
    assert ex.member is not None
    if reusable:
        ex.member.pool.release(upstream)
    else:
        upstream.close()
    rh = collector.response
    assert rh is not None
    try:
        raw = collector.body(health.MAX_LISTING)
    except ValueError:
        raise BadGateway("upstream sent a malformed model list") from None
    status = rh.status
    if status == 200:
        raw = await _untrusted_as_seen_by(_PATHS[ex.route.name], key, raw, aliases.table(ex.config.aliases))
    lines = [ln for ln in rh.head[:-4].split(b"\r\n")
             if not ln.lower().startswith((b"content-length:", b"transfer-encoding:", b"connection:"))]
    return ex.respond(status, b"\r\n".join(lines) + b"\r\n" + ex.extra_headers, raw)
