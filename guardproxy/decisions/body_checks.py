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
from . import forms, models, routes
from .reading import Reading, read_json


class BodyModel(NamedTuple):
    name: str | None  # the model the request runs (checked, routed by and logged), when it was read
    for_log: str | None  # a model read only for the log, when `name` was not needed
    reading: Reading | None = None  # the JSON body's reading, when one was made


NOTHING = BodyModel(None, None)


def check_body(key: KeyEntry, route: routes.Route, req: RequestHead, body: bytes, needs_model: bool, routed: bool,
               checks_keep_alive: bool) -> BodyModel:
    """Check the body as the key's policy needs (`needs_model`: its model; `checks_keep_alive`)
    and read the model routing needs (`routed`).

    Every body is read one way, the strict grammar (json_body.py, forms.py), in time linear in
    its size.  A body outside it is refused only when a check needs the body; else it goes on
    for the host to answer (NOTHING).
    """
    reading: Reading | None = None
    try:
        plain = decoded_body(body, req.get(b"content-encoding"), zstd_allowed=route.zstd)
        if route.model == routes.FORM:
            name = forms.form_model(plain, req.get(b"content-type"), req.target) if needs_model or routed else None
        else:
            reading = read_json(route, plain)
            # Without a model list, a body that names no model needs no model check (Ollama
            # refuses it itself); with one, it is refused here.
            name = models.body_model(route, reading) if needs_model and key.models is not None else reading.model
    except BadRequest:
        if needs_model or checks_keep_alive:
            raise
        return NOTHING
    if needs_model and name is not None:
        models.check_model(key, name)
    if checks_keep_alive and reading is not None:
        models.check_keep_alive(key, reading)
    if needs_model or routed:
        return BodyModel(name, None, reading)
    return BodyModel(None, name, reading)
