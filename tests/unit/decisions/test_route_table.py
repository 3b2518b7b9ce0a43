"""The route table: every row of Ollama's surface, default-deny for what is not in it."""

from __future__ import annotations

import pytest

from guardproxy.config.model import KeyEntry
from guardproxy.decisions import routes
from guardproxy.decisions.routes import UNKNOWN, NotFound, authorize, route_for
from guardproxy.wire.errors import Forbidden

ORDINARY = KeyEntry("app", b"")
ADMIN = KeyEntry("owner", b"", admin=True)

EVERY_KEY = [
    (b"GET", b"/"), (b"HEAD", b"/"), (b"GET", b"/api/version"), (b"HEAD", b"/api/version"), (b"GET", b"/api/status"),
    (b"GET", b"/api/tags"), (b"HEAD", b"/api/tags"), (b"GET", b"/api/ps"), (b"GET", b"/v1/models"),
    (b"GET", b"/v1/models/llama3.2"), (b"POST", b"/api/show"), (b"POST", b"/api/generate"), (b"POST", b"/api/chat"),
    (b"POST", b"/api/embed"), (b"POST", b"/api/embeddings"), (b"POST", b"/v1/chat/completions"),
    (b"POST", b"/v1/completions"), (b"POST", b"/v1/embeddings"), (b"POST", b"/v1/responses"),
    (b"POST", b"/v1/messages"), (b"POST", b"/v1/audio/transcriptions"), (b"POST", b"/v1/images/generations"),
    (b"POST", b"/v1/images/edits"),
]
ADMIN_ONLY = [
    (b"POST", b"/api/pull"), (b"POST", b"/api/push"), (b"POST", b"/api/create"), (b"POST", b"/api/copy"),
    (b"DELETE", b"/api/delete"), (b"POST", b"/api/blobs/sha256:0a1b"), (b"HEAD", b"/api/blobs/sha256:0a1b"),
    (b"POST", b"/api/me"), (b"POST", b"/api/signout"), (b"DELETE", b"/api/user/keys/c3NoLWVkMjU1MTk"),
    (b"POST", b"/api/experimental/web_search"), (b"POST", b"/api/experimental/web_fetch"),
]
UNKNOWN_TO_THE_TABLE = [
    (b"GET", b"/api/experimental/model-recommendations"), (b"POST", b"/v1/batches"), (b"GET", b"/api/generate"),
    (b"DELETE", b"/api/chat"), (b"GET", b"/v1/models/a/b"), (b"OPTIONS", b"*"), (b"POST", b"/api/tags"),
]


@pytest.mark.parametrize("method,path", EVERY_KEY)
def test_rows_every_key_may_use(method: bytes, path: bytes) -> None:
    r = route_for(method, path)
    assert r is not UNKNOWN and not r.admin
    authorize(ORDINARY, r, path)
    authorize(ADMIN, r, path)


@pytest.mark.parametrize("method,path", ADMIN_ONLY)
def test_admin_rows_are_403_for_other_keys(method: bytes, path: bytes) -> None:
    r = route_for(method, path)
    assert r is not UNKNOWN and r.admin
    with pytest.raises(Forbidden):
        authorize(ORDINARY, r, path)
    with pytest.raises(Forbidden):
        authorize(KeyEntry("cloudy", b"", cloud=True, models=("*",)), r, path)
    authorize(ADMIN, r, path)


@pytest.mark.parametrize("method,path", UNKNOWN_TO_THE_TABLE)
def test_what_the_table_does_not_know_is_404_except_for_admins(method: bytes, path: bytes) -> None:
    r = route_for(method, path)
    assert r is UNKNOWN
    with pytest.raises(NotFound) as e:
        authorize(ORDINARY, r, path)
    assert (e.value.status, e.value.message) == (404, "not found")
    authorize(ADMIN, r, path)


@pytest.mark.parametrize("path", [b"/api/pull/", b"/api/blobs", b"/api/blobs/", b"/api/user/keys"])
def test_the_admin_family_stays_admin_with_other_methods_and_slashes(path: bytes) -> None:
    for method in (b"GET", b"POST", b"DELETE"):
        with pytest.raises(Forbidden):
            authorize(ORDINARY, route_for(method, path), path)


def test_a_trailing_slash_is_the_same_route() -> None:
    assert route_for(b"GET", b"/api/tags/") is route_for(b"GET", b"/api/tags")


def test_generations_and_where_their_model_and_counts_are() -> None:
    gens = {r.name for r in routes.ROUTES if r.generation}
    assert gens == {"generate", "chat", "embed", "embeddings", "chat_completions", "completions", "v1_embeddings",
                    "responses", "messages", "transcriptions", "image_generations", "image_edits", "systemone"}
    assert all(r.model != routes.NO_MODEL for r in routes.ROUTES if r.generation)
    assert all(r.counts for r in routes.ROUTES if r.generation)
    assert route_for(b"POST", b"/api/show").model == routes.BODY_OR_NAME
    assert route_for(b"POST", b"/v1/audio/transcriptions").model == routes.FORM
    assert route_for(b"GET", b"/v1/models/x").model == routes.PATH
    assert {r.name for r in routes.ROUTES if r.listing} == {"tags", "ps", "models"}
    assert route_for(b"POST", b"/v1/messages").counts == routes.ANTHROPIC
    assert route_for(b"POST", b"/v1/responses").counts == routes.RESPONSES
    assert route_for(b"POST", b"/api/blobs/sha256:00").blob


def test_names_are_unique_and_stable() -> None:
    names = [r.name for r in routes.ROUTES]
    assert len(names) == len(set(names)) and UNKNOWN.name not in names


def test_systemone_is_a_generation_with_model_and_keep_alive() -> None:
    r = route_for(b"POST", b"/v1/systemone")
    assert r.name == "systemone" and r.generation and r.model == routes.BODY and r.keep_alive
    assert r.counts == routes.RESPONSES and not r.admin
    authorize(ORDINARY, r, b"/v1/systemone")


@pytest.mark.parametrize("path", [b"/api/codex", b"/api/codex/", b"/api/codex/v1/responses",
                                  b"/api/codex/models/gpt-5/x"])
@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE", b"PUT"])
def test_codex_is_admin_only_at_any_depth_and_method(method: bytes, path: bytes) -> None:
    r = route_for(method, path)
    assert r.name == "codex" and r.admin
    with pytest.raises(Forbidden):
        authorize(ORDINARY, r, path)
    authorize(ADMIN, r, path)


def test_web_search_and_output_caps_by_route() -> None:
    assert route_for(b"POST", b"/v1/messages").web_search == routes.WEB_SEARCH_PREFIX
    assert route_for(b"POST", b"/v1/responses").web_search == routes.WEB_SEARCH_EXACT
    assert {r.name for r in routes.ROUTES if r.web_search} == {"messages", "responses"}
    assert {r.name for r in routes.ROUTES if r.options} == {"generate", "chat", "embed", "embeddings"}
    assert {r.name: r.output_cap for r in routes.ROUTES if r.output_cap} == {
        "generate": routes.OLLAMA, "chat": routes.OLLAMA, "chat_completions": routes.OPENAI,
        "completions": routes.OPENAI, "responses": routes.RESPONSES, "messages": routes.ANTHROPIC}
