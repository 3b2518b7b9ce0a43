"""Routes and scopes: path normalisation, admin endpoints, model globs, filtered listings."""

from __future__ import annotations

import pytest

from guardproxy.config.model import KeyEntry
from guardproxy.decisions import routes as policy
from guardproxy.wire.errors import BadRequest, Forbidden


@pytest.mark.parametrize("target", [b"//api/pull", b"/api/./pull", b"/api/%70ull", b"/api%2Fpull", b"/api/x/../pull",
                                    b"http://127.0.0.1:11434/api/pull", b"*", b"/api/pull/.", b"/api\\pull",
                                    b"/api/pull/..", b"/%2e/api/pull"])
def test_paths_normalisation_would_change_are_refused(target: bytes) -> None:
    with pytest.raises(BadRequest):
        policy.check_path(target)


def test_normal_paths_pass_with_query() -> None:
    assert policy.check_path(b"/api/blobs/sha256:abc?x=%2F") == b"/api/blobs/sha256:abc"


@pytest.mark.parametrize("path", [b"/api/pull", b"/api/push", b"/api/delete", b"/api/create", b"/api/copy",
                                  b"/api/blobs/sha256:00", b"/api/blobs", b"/api/pull/"])
def test_admin_paths(path: bytes) -> None:
    assert policy.is_admin_path(path)
    with pytest.raises(Forbidden):
        policy.check_endpoint(KeyEntry("k", b""), path)
    policy.check_endpoint(KeyEntry("k", b"", admin=True), path)


@pytest.mark.parametrize("name,ok", [("qwen3:8b", True), ("qwen3", True), ("QWEN3:8B", True), ("llama3.2", True),
                                     ("llama3.2:latest", True), ("registry.ollama.ai/library/llama3.2", True),
                                     ("llama3.2:1b", False), ("mistral:7b", False), ("qwen3x", False)])
def test_model_globs(name: str, ok: bool) -> None:
    assert policy.model_allowed(("qwen3:*", "llama3.2"), name) is ok


def test_model_body_checks_every_spelling_of_the_field() -> None:
    key = KeyEntry("k", b"", models=("llama3.2",))
    assert policy.check_models(key, b'{"model":"llama3.2","prompt":"hi"}') == "llama3.2"
    # Ollama's JSON decoder matches field names case-insensitively, last one wins.
    for body in (b'{"model":"llama3.2","MODEL":"mistral:7b"}', b'{"model":"llama3.2","name":"mistral:7b"}',
                 b'{"model":"llama3.2","model":"mistral:7b"}'):
        with pytest.raises(Forbidden):
            policy.check_models(key, body)
    for body in (b'nope', b'[]', b'{"prompt":"x"}', b'{"model":3}'):
        with pytest.raises(BadRequest):
            policy.check_models(key, body)


def test_filter_listing() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    out = policy.filter_listing(b"/api/tags", key, b'{"models":[{"name":"qwen3:8b"},{"name":"llama3.2:latest"}]}')
    assert out == b'{"models":[{"name":"qwen3:8b"}]}'
    out = policy.filter_listing(b"/v1/models", key, b'{"object":"list","data":[{"id":"llama3.2:latest"},{"id":"qwen3:8b"}]}')
    assert out == b'{"object":"list","data":[{"id":"qwen3:8b"}]}'


def test_v1_model_retrieval_checked() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    policy.check_endpoint(key, b"/v1/models/qwen3:8b")
    with pytest.raises(Forbidden):
        policy.check_endpoint(key, b"/v1/models/mistral:7b")


def test_model_limited_key_may_post_only_to_checked_endpoints() -> None:
    key = KeyEntry("k", b"", models=("qwen3:*",))
    policy.check_endpoint(key, b"/api/chat", b"POST")
    policy.check_endpoint(key, b"/api/version", b"GET")
    with pytest.raises(Forbidden):
        policy.check_endpoint(key, b"/v1/messages", b"POST")
    policy.check_endpoint(KeyEntry("k", b""), b"/v1/messages", b"POST")
