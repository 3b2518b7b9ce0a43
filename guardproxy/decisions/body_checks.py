"""What a key's policy and routing read from a request body held whole: its model, its keep_alive.

Pure: the body, its parsed head, the route and the key in; the model
out, or a refusal (BadRequest, Forbidden).
"""

from __future__ import annotations

from typing import NamedTuple

from ..config.model import KeyEntry
from ..wire.coding import decoded_body
from ..wire.errors import BadRequest
from ..wire.heads import RequestHead
from . import models, routes
from .routing import model_of


class BodyModel(NamedTuple):
    name: str | None  # the model the request runs (checked, routed by and logged), when it was read
    for_log: str | None  # a model read only for the log (the quick way), when `name` was not needed


NOTHING = BodyModel(None, None)


def check_body(key: KeyEntry, route: routes.Route, req: RequestHead, body: bytes, needs_model: bool, routed: bool,
               checks_keep_alive: bool) -> BodyModel:
    """Check the body as the key's policy needs (`needs_model`: its model; `checks_keep_alive`)
    and read the model routing needs (`routed`).

    A body whose model cannot be read is refused only when a check needs it; else it goes on
    for the host to answer (NOTHING).
    """
    pairs: models.Pairs | None = None  # the body's top level, parsed once for all that read it
    try:
        plain = decoded_body(body, req.get(b"content-encoding"), zstd_allowed=route.zstd)
        name: str | None
        if not (needs_model or routed):
            name = None
        elif route.model == routes.FORM:
            name = models.form_model(plain, req.get(b"content-type"), req.target)
        elif key.models is None and not (needs_model and models.could_name_cloud(plain)):
            # No check needs the model (only the cloud scope applies, and no string here can
            # name a cloud model): it is read the quick way, for routing and the log.
            if checks_keep_alive:
                pairs = models.top_level(plain)  # keep_alive is read from it: the quick way shares it
            name = model_of(plain if pairs is None else dict(pairs), route.model == routes.BODY_OR_NAME) \
                if routed else None
            if name is None:
                for_log = models.model_for_log(plain)
                if checks_keep_alive:
                    models.check_keep_alive(key, plain if pairs is None else pairs)
                return BodyModel(None, for_log)
        else:
            pairs = models.top_level(plain)
            name = models.body_model(route, pairs)
    except BadRequest:
        if needs_model or checks_keep_alive:
            raise
        return NOTHING
    if name is not None and needs_model:
        models.check_model(key, name)
    if checks_keep_alive:
        models.check_keep_alive(key, plain if pairs is None else pairs)
    return BodyModel(name, None)
