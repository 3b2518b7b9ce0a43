"""What check_body reads from a body held whole: the model and keep_alive, from one parse."""

from __future__ import annotations

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


@pytest.mark.parametrize("key,needs_model,routed,name,for_log", [
    (LISTED, True, True, "llama3.2", None),
    (CLOUD, False, True, "llama3.2", None),
    (CLOUD, False, False, None, "llama3.2"),  # only keep_alive is checked; the model goes to the log
])
def test_one_reading_serves_model_and_keep_alive(key: KeyEntry, needs_model: bool, routed: bool,
                                                 name: str | None, for_log: str | None) -> None:
    found = check_body(key, CHAT, REQ, b'{"model":"llama3.2","keep_alive":"5m"}', needs_model, routed, True)
    assert (found.name, found.for_log) == (name, for_log)
    assert found.reading is not None and found.reading.keep_alive_ns == 300 * 10**9


@pytest.mark.parametrize("key,needs_model", [(LISTED, True), (CLOUD, False)])
def test_keep_alive_is_still_checked_on_either_path(key: KeyEntry, needs_model: bool) -> None:
    with pytest.raises(Forbidden, match="keep_alive"):
        check_body(key, CHAT, REQ, b'{"model":"llama3.2","keep_alive":-1}', needs_model, True, True)
    with pytest.raises(BadRequest, match="must be JSON"):
        check_body(key, CHAT, REQ, b'{"model":', needs_model, True, True)


def test_the_model_check_comes_before_keep_alive() -> None:
    with pytest.raises(Forbidden, match="may not use model"):
        check_body(LISTED, CHAT, REQ, b'{"model":"mistral","keep_alive":-1}', True, True, True)


def test_a_body_outside_the_grammar_goes_on_unread_only_when_no_check_needs_it() -> None:
    body = b'{"model":"a","Model":"b","keep_alive":"1m"}'
    assert check_body(CLOUD, CHAT, REQ, body, False, True, False) == BodyModel(None, None)
    with pytest.raises(BadRequest, match="spells"):
        check_body(CLOUD, CHAT, REQ, body, False, True, True)
