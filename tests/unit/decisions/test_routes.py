"""Routes and scopes: path normalisation, admin endpoints, model globs, filtered listings (see also
test_route_table.py and test_model_checks.py)."""

from __future__ import annotations

import pytest

from guardproxy.config.model import KeyEntry
from guardproxy.decisions import models, routes
from guardproxy.wire.errors import BadRequest, Forbidden


@pytest.mark.parametrize("target", [b"//api/pull", b"/api/./pull", b"/api/%70ull", b"/api%2Fpull", b"/api/x/../pull",
                                    b"http://127.0.0.1:11434/api/pull", b"*", b"/api/pull/.", b"/api\\pull",
                                    b"/api/pull/..", b"/%2e/api/pull"])
def test_paths_normalisation_would_change_are_refused(target: bytes) -> None:
    with pytest.raises(BadRequest):
        routes.check_path(target)


def test_normal_paths_pass_with_query() -> None:
    assert routes.check_path(b"/api/blobs/sha256:abc?x=%2F") == b"/api/blobs/sha256:abc"


@pytest.mark.parametrize("path", [b"/api/pull", b"/api/push", b"/api/delete", b"/api/create", b"/api/copy",
                                  b"/api/blobs/sha256:00", b"/api/blobs", b"/api/pull/"])
def test_admin_paths(path: bytes) -> None:
    assert routes.is_admin_path(path)
    for method in (b"POST", b"DELETE", b"HEAD", b"GET"):
        with pytest.raises(Forbidden):
            routes.authorize(KeyEntry("k", b""), routes.route_for(method, path), path)
        routes.authorize(KeyEntry("k", b"", admin=True), routes.route_for(method, path), path)


@pytest.mark.parametrize("name,ok", [("qwen3:8b", True), ("qwen3", True), ("QWEN3:8B", True), ("llama3.2", True),
                                     ("llama3.2:latest", True), ("registry.ollama.ai/library/llama3.2", True),
                                     ("llama3.2:1b", False), ("mistral:7b", False), ("qwen3x", False)])
def test_model_globs(name: str, ok: bool) -> None:
    assert models.model_allowed(("qwen3:*", "llama3.2"), name) is ok


def test_model_body_is_read_as_ollama_reads_it() -> None:
    key = KeyEntry("k", b"", models=("llama3.2",))
    chat = routes.route_for(b"POST", b"/api/chat")
    models.check_model(key, models.body_model(chat, b'{"model":"llama3.2","prompt":"hi"}'))
    # Ollama's JSON decoder matches field names case-insensitively and the last one wins, while its
    # cloud middleware reads "model" exactly: two readings of one field are refused.
    for body in (b'{"model":"llama3.2","MODEL":"mistral:7b"}', b'{"model":"llama3.2","model":"mistral:7b"}'):
        with pytest.raises(BadRequest):
            models.body_model(chat, body)
    with pytest.raises(BadRequest):  # Go's cloud proxy reads only the exact spelling
        models.check_model(key, models.body_model(chat, b'{"MODEL":"mistral:7b"}'))
    for body in (b'nope', b'[]', b'{"prompt":"x"}', b'{"model":3}'):
        with pytest.raises(BadRequest):
            models.body_model(chat, body)


def test_filter_listing() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    out = models.filter_listing(b"/api/tags", key, b'{"models":[{"name":"qwen3:8b"},{"name":"llama3.2:latest"}]}')
    assert out == b'{"models":[{"name":"qwen3:8b"}]}'
    out = models.filter_listing(b"/v1/models", key, b'{"object":"list","data":[{"id":"llama3.2:latest"},{"id":"qwen3:8b"}]}')
    assert out == b'{"object":"list","data":[{"id":"qwen3:8b"}]}'


def test_v1_model_retrieval_names_its_model_in_the_path() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    route = routes.route_for(b"GET", b"/v1/models/qwen3:8b")
    assert route.model == routes.PATH and models.needs_model(key, route)
    models.check_model(key, "qwen3:8b")
    with pytest.raises(Forbidden):
        models.check_model(key, "mistral:7b")


def test_model_limited_keys_may_use_every_model_route() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    for method, path in ((b"POST", b"/api/chat"), (b"GET", b"/api/version"), (b"POST", b"/v1/messages"),
                         (b"POST", b"/v1/responses"), (b"POST", b"/v1/audio/transcriptions")):
        routes.authorize(key, routes.route_for(method, path), path)
    with pytest.raises(routes.NotFound):
        routes.authorize(key, routes.route_for(b"POST", b"/v1/batches"), b"/v1/batches")
