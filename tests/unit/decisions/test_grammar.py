"""The one grammar bodies are read in (json_body, reading, forms): what is read, what is refused."""

from __future__ import annotations

import pytest

from guardproxy.decisions import forms
from guardproxy.decisions.json_body import MAX_TOP_MEMBERS, read_top
from guardproxy.decisions.reading import FOREVER, keep_alive_ns, parse_go_duration, read_json
from guardproxy.decisions.routes import route_for
from guardproxy.wire.errors import BadRequest

CHAT = route_for(b"POST", b"/api/chat")
MESSAGES = route_for(b"POST", b"/v1/messages")
FORM_CT = b"multipart/form-data; boundary=B"


def form(*parts: bytes, nl: bytes = b"\r\n", end: bytes = b"\r\n") -> bytes:
    out = b""
    for value in parts:
        out += b"--B" + nl + b'Content-Disposition: form-data; name="model"' + nl + nl + value + nl
    return out + b"--B--" + end


@pytest.mark.parametrize("raw,ns", [
    (b"5e-324", 0), (b"1e-10", 0), (b"1e-9", 1), (b"0", 0), (b"-0", 0), (b"-0.0", 0), (b"-1", FOREVER),
    (b"300", 300 * 10**9), (b"1.5", 1_500_000_000), (b'"5m"', 300 * 10**9), (b'"-1s"', FOREVER),
    (b'"0"', 0), (b'"1h30m"', 5400 * 10**9), (b'".5s"', 500_000_000), (b'"1\xc2\xb5s"', 1000),
    (b'"2562047h47m16.854775807s"', 2**63 - 1), (b"null", None),
])
def test_keep_alive_is_ollamas_nanoseconds(raw: bytes, ns: int | None) -> None:
    assert keep_alive_ns(raw) == ns


@pytest.mark.parametrize("raw", [b"1e10", b"true", b'"5"', b'"1d"', b'"2562047h47m16.854775808s"', b"[]",
                                 b'"9223372036854775808ns"'])
def test_keep_alive_go_refuses_or_could_not_agree_on_is_400(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        keep_alive_ns(raw)


def test_go_durations_overflow_as_go_does() -> None:
    assert parse_go_duration("-9223372036854775808ns") == -2**63
    with pytest.raises(ValueError):
        parse_go_duration("9223372036854775808ns")


@pytest.mark.parametrize("body,why", [
    (b'{"model":"a"} {"model":"b"}', "after its JSON object"),
    (b'\xef\xbb\xbf{"model":"a"}', "byte order mark"),
    (b'{"model":"a","x":NaN}', "must be JSON"),
    (b'{"model":"a\\ud800"}', "lone surrogate"),
    (b'{"model":"a\xff"}', "invalid UTF-8"),
    (b'{"model":"a","x":' + b"[" * 600 + b"]" * 600 + b"}", "deeper"),
    (b'{"model":"a","MODEL":"b"}', "spells"),
    ('{"model":"a","keep_al\u0131ve":1}'.encode(), "spells"),  # dotless i: Go 1.21+ folds it onto i
    (b'{"model":"a","model":"a"}', "more than once"),
    (b'{"model":"a","options":{"num_predict":1e400}}', "out of range"),
    (b'{"model":"a","options":[1]}', "options must be an object"),
])
def test_bodies_outside_the_grammar_are_400(body: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        read_json(CHAT, body)


def test_members_nobody_reads_are_skipped_but_bounded() -> None:
    many = b'{"model":"a",' + b'"a":1,' * MAX_TOP_MEMBERS + b'"b":1}'
    with pytest.raises(BadRequest, match="top-level members"):
        read_top(many)
    nested = b'{"model":"a","x":{' + b'"a":[1,{"b":"}"}],' * 5000 + b'"c":null}}'
    assert read_top(nested) == {"model": b'"a"'}


def test_the_reading_of_a_messages_body() -> None:
    body = (b'{"model":"m","max_tokens":100,"thinking":{"type":"enabled","budget_tokens":50},'
            b'"tools":[{"type":"web_search_20250305","name":"w"},{"name":"f"}]}')
    r = read_json(MESSAGES, body)
    assert (r.model, r.caps, r.tool_types) == ("m", {"max_tokens": 100, "thinking.budget_tokens": 50},
                                               ("web_search_20250305", ""))
    for bad in (b'{"model":"m","max_tokens":1.0}', b'{"model":"m","max_tokens":1e3}',
                b'{"model":"m","thinking":{"budget_tokens":1,"Budget_tokens":2}}',
                b'{"model":"m","tools":[{"type":"a","TYPE":"web_search"}]}'):
        with pytest.raises(BadRequest):
            read_json(MESSAGES, bad)


def test_the_form_model() -> None:
    assert forms.form_model(form(b"llama3.2"), FORM_CT, b"/v1/audio/transcriptions") == "llama3.2"
    assert forms.form_model(form(b"llama3.2", end=b""), FORM_CT, b"/") == "llama3.2"
    assert forms.form_model(form(b"a\nb--B"), FORM_CT, b"/") == "a\nb--B"  # bare LF inside a value is content


@pytest.mark.parametrize("body,ct,why", [
    (form(b"qwen3:480b-cloud"), b"multipart/form-data; boundary=B; boundary*0=GO", "RFC 2231"),
    (form(b"x"), b"multipart/form-data; boundary=B; boundary=C", "repeats"),
    (form(b"x"), b"multipart/form-data; boundary*=B", "RFC 2231"),
    (form(b"gpt-oss:120b-cloud", nl=b"\n") + form(b"llama3.2"), FORM_CT, "open with its boundary line"),
    (b"preamble\r\n" + form(b"x"), FORM_CT, "open with its boundary line"),
    (form(b"x", end=b"\r\nepilogue"), FORM_CT, "close the form"),
    (form(b"x", b"y"), FORM_CT, "exactly one 'model' part"),
    (form(b"--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nq:cloud"), FORM_CT,
     "start with the boundary|empty CRLF line"),
    (form(b"x").replace(b"\r\n\r\nx", b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nx"), FORM_CT,
     "Content-Transfer-Encoding"),
    (form(b"x").replace(b'name="model"', b'name="model"\nX: y'), FORM_CT, "part header"),
])
def test_forms_go_could_read_differently_are_400(body: bytes, ct: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        forms.form_model(body, ct, b"/v1/audio/transcriptions")
