"""Body edits with literals: aliases, web search, placement options, clamps and the re-encoding."""

from __future__ import annotations

import json

import pytest
import zstandard

from guardproxy.config.model import KeyEntry
from guardproxy.decisions import routes
from guardproxy.decisions.aliases import table
from guardproxy.decisions.body_edits import UNCHANGED, edit_body, needs_body
from guardproxy.decisions.json_members import MAX_MEMBERS, SKIPPED, JsonObject, skip_value
from guardproxy.decisions.routes import route_for
from guardproxy.wire.errors import BadRequest, Forbidden
from guardproxy.wire.heads import parse_request_head

KEY = KeyEntry("k", b"\0" * 32)
CLOUD = KeyEntry("c", b"\0" * 32, cloud=True)
ADMIN = KeyEntry("a", b"\0" * 32, admin=True)
CAPPED = KeyEntry("capped", b"\0" * 32, max_num_ctx=4096, max_output_tokens=256)
NO_ALIASES = table(())
ALIASES = table((("gpt-4o-mini", "llama3.2:3b"), ("claude-3-haiku", "qwen3:8b")))


def head(path: str, coding: str | None = None) -> object:
    extra = f"Content-Encoding: {coding}\r\n" if coding else ""
    return parse_request_head(f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 1\r\n\r\n".encode())


def run(key: KeyEntry, path: str, body: bytes, aliases: object = NO_ALIASES, coding: str | None = None) -> object:
    return edit_body(key, route_for(b"POST", path.encode()), head(path, coding), body, aliases)  # type: ignore[arg-type]


def doc(edited: object) -> dict[str, object]:
    return json.loads(edited.body)  # type: ignore[attr-defined, no-any-return]


# --- the member scanner -------------------------------------------------------------------

def test_members_keep_their_text_and_a_set_field_replaces_every_spelling() -> None:
    text = '{ "a" : [1, {"b":2}] ,"Max_Tokens":9,"x":"\\u0041","max_tokens":7 , "MAX_TOKENS" :8}\n'
    obj = JsonObject(text, wanted=frozenset({"max_tokens"}))
    assert [m.key for m in obj.members] == ["a", "Max_Tokens", "x", "max_tokens", "MAX_TOKENS"]
    assert obj.members[0].value is SKIPPED and obj.members[0].end == text.index("]") + 1
    assert obj.last("max_tokens") == 8
    obj.set("max_tokens", "5")
    assert obj.document() == '{"a" : [1, {"b":2}],"x":"\\u0041","max_tokens":5}\n'


@pytest.mark.parametrize("name", ["max_to\u212aens", "max_tokenſ".replace("ſ", "\u017f")])
def test_go_folding_names_are_the_same_field(name: str) -> None:
    obj = JsonObject(json.dumps({name: 99999}), wanted=frozenset({"max_tokens"}))
    assert obj.last("max_tokens") == 99999


@pytest.mark.parametrize("text", ['[1]', '{"a":1', '{"a" 1}', '{"a":NaN}', '{a:1}', '', '{"a":1,}',
                                  '{"a":"x}', '{"a":[1,2}', '{"a":[[[[[[1]]]]]}'])
def test_what_is_not_an_object_is_400(text: str) -> None:
    with pytest.raises(BadRequest):
        JsonObject(text, wanted=frozenset({"a"}) if "NaN" in text else frozenset())


@pytest.mark.parametrize("value", ['"a\\"b\\\\"', '-1.5e3', 'true', '[1,[2,[3,[4,[5,[6,{"x":"]"}]]]]]]',
                                   '{"a":{"b":{"c":{"d":{"e":{}}}}}}', '[' * 50 + ']' * 50, '"}"'])
def test_skipping_a_value_finds_its_end(value: str) -> None:
    text = value + ' ,"rest"'
    assert skip_value(text, 0) == len(value)


def test_more_members_than_any_request_has_is_400() -> None:
    text = "{" + ",".join(f'"k{i}":1' for i in range(MAX_MEMBERS + 1)) + "}"
    with pytest.raises(BadRequest):
        JsonObject(text)
    assert len(JsonObject(text.replace(f',"k{MAX_MEMBERS}":1', "")).members) == MAX_MEMBERS


# --- aliases ---------------------------------------------------------------------------------

def test_alias_rewrites_the_model_and_keeps_every_other_member() -> None:
    body = b'{"model":"GPT-4o-mini","messages":[{"role":"user","content":"hi"}], "stream" : true}'
    edited = run(KEY, "/v1/chat/completions", body, ALIASES)
    assert edited.alias == "GPT-4o-mini"  # type: ignore[attr-defined]
    assert edited.body == b'{"model":"llama3.2:3b","messages":[{"role":"user","content":"hi"}],"stream" : true}'  # type: ignore[attr-defined]


def test_alias_with_the_default_tag_and_every_case_variant_of_model() -> None:
    body = b'{"Model":"gpt-4o-mini:latest","prompt":"x","MODEL":"gpt-4o-mini:latest"}'
    edited = run(KEY, "/api/generate", body, ALIASES)
    assert doc(edited) == {"model": "llama3.2:3b", "prompt": "x"}


def test_alias_in_show_name_and_a_model_that_is_no_alias() -> None:
    assert doc(run(KEY, "/api/show", b'{"name":"claude-3-haiku"}', ALIASES)) == {"name": "qwen3:8b"}
    assert run(KEY, "/api/generate", b'{"model":"llama3.2"}', ALIASES) == UNCHANGED


def test_two_different_models_are_400() -> None:
    with pytest.raises(BadRequest):
        run(KEY, "/api/generate", b'{"model":"gpt-4o-mini","Model":"x"}', ALIASES)


# --- web search ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tool", ['{"type":"web_search_20250305","name":"web_search"}', '{"type":"web_search"}',
                                  '{"TYPE":"web_search_x"}', '{"type":"web\\u005fsearch_20250305"}',
                                  '{"type":"custom","type":"web_search_1"}'])
def test_messages_web_search_needs_cloud(tool: str) -> None:
    body = ('{"model":"llama3.2","max_tokens":10,"messages":[],"tools":[{"type":"custom","name":"f"},%s]}'
            % tool).encode()
    with pytest.raises(Forbidden) as e:
        run(KEY, "/v1/messages", body)
    assert "web_search" in e.value.message and "cloud" in e.value.message
    assert run(CLOUD, "/v1/messages", body) == UNCHANGED
    assert run(ADMIN, "/v1/messages", body) == UNCHANGED


def test_responses_web_search_is_the_exact_type() -> None:
    with pytest.raises(Forbidden) as e:
        run(KEY, "/v1/responses", b'{"model":"llama3.2","input":"x","Tools":[{"type":"web_search"}]}')
    assert "'web_search'" in e.value.message
    # Ollama's rule is exact and case-sensitive here: these are not its web search.
    for other in (b'"WEB_SEARCH"', b'"web_search_preview"', b'"function","name":"web_search"'):
        body = b'{"model":"llama3.2","input":"x","tools":[{"type":' + other + b'}]}'
        assert run(KEY, "/v1/responses", body) == UNCHANGED


def test_web_search_in_a_zstd_body_is_seen() -> None:
    body = b'{"model":"llama3.2","max_tokens":5,"messages":[],"tools":[{"type":"web_search_20250305"}]}'
    with pytest.raises(Forbidden):
        run(KEY, "/v1/messages", zstandard.ZstdCompressor().compress(body), coding="zstd")


# --- placement options -----------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["num_gpu", "main_gpu", "num_thread", "num_batch", "use_mmap",
                                    "draft_num_predict"])
def test_placement_options_are_admin_only(option: str) -> None:
    body = json.dumps({"model": "llama3.2", "options": {"temperature": 0.1, option: 1}}).encode()
    with pytest.raises(Forbidden) as e:
        run(KEY, "/api/chat", body)
    assert repr(option) in e.value.message
    assert run(ADMIN, "/api/chat", body) == UNCHANGED


def test_placement_in_a_repeated_or_escaped_options_member_is_seen() -> None:
    with pytest.raises(Forbidden):
        run(KEY, "/api/generate", b'{"model":"m","options":{"num_gpu":1},"Options":{"top_k":1}}')
    with pytest.raises(Forbidden):
        run(KEY, "/api/generate", b'{"model":"m","options":{"num\\u005fgpu":1}}')
    # null starts Go's map again; a different case is another (unknown) option to Ollama.
    assert run(KEY, "/api/generate", b'{"model":"m","options":{"num_gpu":1},"options":null}') == UNCHANGED
    assert run(KEY, "/api/generate", b'{"model":"m","options":{"NUM_GPU":1}}') == UNCHANGED


# --- clamps -------------------------------------------------------------------------------------------

def test_num_ctx_and_num_predict_lowered_with_the_rest_kept() -> None:
    body = b'{"model":"m","options":{"num_ctx":131072,"temperature":0.5,"num_predict":-1},"prompt":"p"}'
    edited = run(CAPPED, "/api/generate", body)
    assert edited.clamped == ("options.num_ctx", "options.num_predict")  # type: ignore[attr-defined]
    assert doc(edited) == {"model": "m", "options": {"num_ctx": 4096, "temperature": 0.5, "num_predict": 256},
                           "prompt": "p"}


@pytest.mark.parametrize("options,expected", [
    ('', {"num_predict": 256}), ('"options":null,', {"num_predict": 256}),
    ('"options":{"num_predict":-2},', {"num_predict": 256}), ('"options":{"num_predict":100000},', {"num_predict": 256}),
    ('"options":{"num_ctx":1e9,"num_ctx":2048},', {"num_ctx": 2048, "num_predict": 256}),
])
def test_num_predict_set_where_unlimited(options: str, expected: dict[str, int]) -> None:
    body = ('{"model":"m",%s"messages":[]}' % options).encode()
    assert doc(run(CAPPED, "/api/chat", body))["options"] == expected


def test_values_within_the_limits_are_unchanged() -> None:
    body = b'{"model":"m","options":{"num_ctx":2048,"num_predict":10}}'
    assert run(CAPPED, "/api/generate", body) == UNCHANGED


def test_repeated_options_objects_are_merged_as_go_does() -> None:
    body = b'{"model":"m","options":{"num_ctx":99999,"seed":1},"OPTIONS":{"num_predict":5}}'
    assert doc(run(CAPPED, "/api/generate", body))["options"] == {"num_ctx": 4096, "seed": 1, "num_predict": 5}


@pytest.mark.parametrize("path,fields", [("/v1/chat/completions", ("max_tokens", "max_completion_tokens")),
                                         ("/v1/completions", ("max_tokens", "max_completion_tokens")),
                                         ("/v1/responses", ("max_output_tokens",)),
                                         ("/v1/messages", ("max_tokens",))])
def test_openai_and_anthropic_caps(path: str, fields: tuple[str, ...]) -> None:
    missing = run(CAPPED, path, b'{"model":"m","stream":true}')
    assert missing.clamped == fields and all(doc(missing)[f] == 256 for f in fields)  # type: ignore[attr-defined]
    body = b'{"model":"m","%s":100000,"%s":null}' % (fields[0].upper().encode(), fields[-1].encode())
    high = doc(run(CAPPED, path, body))
    assert all(high[f] == 256 for f in fields) and fields[0].upper() not in high
    within = ('{"model":"m",%s}' % ",".join(f'"{f}":100' for f in fields)).encode()
    assert run(CAPPED, path, within) == UNCHANGED


def test_anthropic_max_tokens_zero_is_set_openai_zero_is_kept() -> None:
    assert doc(run(CAPPED, "/v1/messages", b'{"model":"m","max_tokens":0}'))["max_tokens"] == 256
    body = b'{"model":"m","max_tokens":0,"max_completion_tokens":0}'
    assert run(CAPPED, "/v1/chat/completions", body) == UNCHANGED


def test_thinking_budget_stays_below_max_tokens() -> None:
    body = b'{"model":"m","max_tokens":4000,"thinking":{"type":"enabled","budget_tokens":2000},"messages":[]}'
    edited = run(CAPPED, "/v1/messages", body)
    assert edited.clamped == ("max_tokens", "thinking.budget_tokens")  # type: ignore[attr-defined]
    assert doc(edited)["thinking"] == {"type": "enabled", "budget_tokens": 255}
    low = b'{"model":"m","max_tokens":100,"thinking":{"type":"enabled","Budget_Tokens":100}}'
    assert doc(run(CAPPED, "/v1/messages", low))["thinking"] == {"type": "enabled", "budget_tokens": 99}


def test_a_clamped_zstd_body_goes_on_decompressed() -> None:
    body = b'{"model":"m","max_tokens":99999}'
    edited = run(CAPPED, "/v1/chat/completions", zstandard.ZstdCompressor().compress(body), coding="zstd")
    assert doc(edited)["max_tokens"] == 256


def test_which_requests_are_read_for_this_step() -> None:
    gen, v1 = route_for(b"POST", b"/api/generate"), route_for(b"POST", b"/v1/embeddings")
    assert needs_body(KEY, gen, NO_ALIASES)          # placement options
    assert not needs_body(ADMIN, gen, NO_ALIASES)
    assert not needs_body(KEY, v1, NO_ALIASES)
    assert needs_body(KEY, v1, ALIASES)
    assert needs_body(KEY, route_for(b"POST", b"/v1/messages"), NO_ALIASES)      # web search
    assert not needs_body(CLOUD, route_for(b"POST", b"/v1/messages"), NO_ALIASES)
    assert needs_body(CAPPED, route_for(b"POST", b"/v1/responses"), NO_ALIASES)
    assert routes.route_for(b"GET", b"/api/tags").model == routes.NO_MODEL
