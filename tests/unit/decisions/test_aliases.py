"""[aliases] with literals: matching names as Ollama does, and listings per key."""

from __future__ import annotations

import json

from guardproxy.config.model import KeyEntry
from guardproxy.decisions.aliases import add_to_listing, table

ALIASES = table((("gpt-4o-mini", "llama3.2:3b"), ("big", "qwen3:480b-cloud"), ("Claude", "mistral")))
ANY = KeyEntry("any", b"\0" * 32)
NARROW = KeyEntry("narrow", b"\0" * 32, models=("llama3.2*",))
CLOUD = KeyEntry("cloud", b"\0" * 32, cloud=True)


def test_names_match_in_any_case_with_the_default_tag_and_registry() -> None:
    for asked in ("gpt-4o-mini", "GPT-4o-Mini", "gpt-4o-mini:latest", "library/gpt-4o-mini",
                  "registry.ollama.ai/library/gpt-4o-mini"):
        assert ALIASES.target(asked) == "llama3.2:3b", asked
    assert ALIASES.target("claude:latest") == "mistral"
    for other in ("gpt-4o-mini:8b", "gpt-4o", "llama3.2:3b", "x" * 5000):
        assert ALIASES.target(other) is None
    assert not table(()) and ALIASES


def test_who_may_use_an_alias_is_who_may_use_its_target() -> None:
    assert [a for a, _ in ALIASES.usable_by(ANY)] == ["gpt-4o-mini", "Claude"]
    assert [a for a, _ in ALIASES.usable_by(NARROW)] == ["gpt-4o-mini"]
    assert [a for a, _ in ALIASES.usable_by(CLOUD)] == ["gpt-4o-mini", "big", "Claude"]


def test_tags_get_a_renamed_copy_of_a_listed_target_or_a_bare_entry() -> None:
    body = json.dumps({"models": [{"name": "llama3.2:3b", "model": "llama3.2:3b", "size": 7, "digest": "d"}]})
    out = json.loads(add_to_listing(b"/api/tags", NARROW, body.encode(), ALIASES))["models"]
    assert out[1] == {"name": "gpt-4o-mini", "model": "gpt-4o-mini", "size": 7, "digest": "d"}
    out = json.loads(add_to_listing(b"/api/tags", ANY, body.encode(), ALIASES))["models"]
    assert [m["name"] for m in out] == ["llama3.2:3b", "gpt-4o-mini", "Claude"] and out[2]["size"] == 0


def test_v1_models_and_a_name_listed_already() -> None:
    body = json.dumps({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "x"}]})
    out = json.loads(add_to_listing(b"/v1/models", ANY, body.encode(), ALIASES))["data"]
    assert [m["id"] for m in out] == ["gpt-4o-mini", "Claude"] and out[0]["owned_by"] == "x"
