"""What check_body reads from a body held whole: the model and keep_alive, from one parse."""

from __future__ import annotations

import json
from typing import Any

import pytest

from guardproxy.config.model import KeyEntry
from guardproxy.decisions.body_checks import BodyModel, check_body
from guardproxy.decisions.routes import route_for
from guardproxy.wire.errors import BadRequest, Forbidden
from guardproxy.wire.heads import RequestHead

CHAT = route_for(b"POST", b"/api/chat")
REQ = RequestHead(b"POST", b"/api/chat", b"HTTP/1.1", [], True, None, False, False, b"localhost", frozenset())
LISTED = KeyEntry("k", b"", models=("llama3.2",), max_keep_alive=1800.0)  # the model is checked
CLOUD = KeyEntry("k", b"", cloud=True, max_keep_alive=1800.0)  # the model is read the quick way


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []
    loads = json.loads

    def counting(s: Any, **kw: Any) -> Any:
        seen.append(s)
        return loads(s, **kw)
    monkeypatch.setattr(json, "loads", counting)
    return seen


@pytest.mark.parametrize("key,needs_model,routed,found", [
    (LISTED, True, True, BodyModel("llama3.2", None)),
    (CLOUD, False, True, BodyModel("llama3.2", None)),
    (CLOUD, False, False, BodyModel(None, None)),  # only keep_alive is read
])
def test_the_body_is_parsed_once_for_model_and_keep_alive(parses: list[bytes], key: KeyEntry, needs_model: bool,
                                                          routed: bool, found: BodyModel) -> None:
    body = b'{"model":"llama3.2","keep_alive":"5m"}'
    assert check_body(key, CHAT, REQ, body, needs_model, routed, True) == found
    assert len(parses) == 1


@pytest.mark.parametrize("key,needs_model", [(LISTED, True), (CLOUD, False)])
def test_keep_alive_is_still_checked_on_either_path(key: KeyEntry, needs_model: bool) -> None:
    with pytest.raises(Forbidden, match="keep_alive"):
        check_body(key, CHAT, REQ, b'{"model":"llama3.2","keep_alive":-1}', needs_model, True, True)
    with pytest.raises(BadRequest, match="must be JSON"):
        check_body(key, CHAT, REQ, b'{"model":', needs_model, True, True)


def test_the_model_check_comes_before_keep_alive() -> None:
    with pytest.raises(Forbidden, match="may not use model"):
        check_body(LISTED, CHAT, REQ, b'{"model":"mistral","keep_alive":-1}', True, True, True)


def test_the_quick_read_takes_the_last_exact_model_as_before() -> None:
    body = b'{"model":"a","Model":"b","model":"c","keep_alive":"1m"}'
    assert check_body(CLOUD, CHAT, REQ, body, False, True, True) == BodyModel("c", None)
    assert check_body(CLOUD, CHAT, REQ, body, False, True, False) == BodyModel("c", None)
