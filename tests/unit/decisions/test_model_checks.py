"""Which model a request names, read as Ollama reads it, and whether a key may use it."""

from __future__ import annotations

import pytest

from guardproxy.config.model import KeyEntry
from guardproxy.decisions import models
from guardproxy.decisions.routes import route_for
from guardproxy.wire.errors import BadRequest, Forbidden

CHAT = route_for(b"POST", b"/api/chat")
SHOW = route_for(b"POST", b"/api/show")


@pytest.mark.parametrize("name,cloud", [
    ("llama3.2:cloud", True), ("qwen3:480B-Cloud", True), ("llama3.2: cloud", True), ("gpt-oss:120b-cloud", True),
    ("qwen3-coder:480b-cloud ", True), ("deepseek-v3.1:671B-CLOUD", True), ("x:CLOUD", True),
    ("llama3.2", False), ("llama3.2:latest", False), ("cloud", False), ("my-cloud/llama3.2", False),
    ("registry.example:5000/x-cloud", False), ("a:b/c-cloud", False), ("llama3.2:clouds", False),
    ("llama3.2:local", False),
])
def test_cloud_models_by_ollamas_own_rule(name: str, cloud: bool) -> None:
    assert models.is_cloud(name) is cloud


def test_cloud_needs_the_scope_and_a_glob_never_grants_it() -> None:
    plain = KeyEntry("k", b"")
    globbed = KeyEntry("k", b"", models=("qwen3:*",))
    scoped = KeyEntry("k", b"", cloud=True, models=("qwen3:*",))
    for key in (plain, globbed):
        with pytest.raises(Forbidden, match="may not use cloud model 'qwen3:480b-cloud'"):
            models.check_model(key, "qwen3:480b-cloud")
    models.check_model(scoped, "qwen3:480b-cloud")
    models.check_model(KeyEntry("k", b"", admin=True), "gpt-oss:120b-cloud")  # admin keys may
    with pytest.raises(Forbidden, match="may not use model"):
        models.check_model(scoped, "gpt-oss:120b-cloud")  # the scope does not widen the model list


def test_names_longer_than_ollama_takes_are_400() -> None:
    models.check_model(KeyEntry("k", b""), "a" * models.MAX_MODEL_NAME)
    with pytest.raises(BadRequest):
        models.check_model(KeyEntry("k", b""), "a" * (models.MAX_MODEL_NAME + 1))


def test_who_needs_the_model_checked() -> None:
    assert models.needs_model(KeyEntry("k", b""), CHAT)  # the cloud scope applies to every ordinary key
    assert models.needs_model(KeyEntry("k", b"", cloud=True, models=("a",)), CHAT)
    assert not models.needs_model(KeyEntry("k", b"", cloud=True), CHAT)
    assert not models.needs_model(KeyEntry("k", b"", admin=True), CHAT)
    assert not models.needs_model(KeyEntry("k", b""), route_for(b"GET", b"/api/tags"))


@pytest.mark.parametrize("body,model", [
    (b'{"model":"llama3.2","messages":[]}', "llama3.2"),
    (b'{"model":"llama3.2","name":"other"}', "llama3.2"),       # "name" is not chat's field
    (b'{"\\u006dodel":"llama3.2"}', "llama3.2"),                # an escaped field name is the same field
    (b'{"messages":[{"model":"nested"}],"model":"top"}', "top"),
])
def test_the_model_ollama_will_use(body: bytes, model: str) -> None:
    assert models.body_model(CHAT, body) == model


@pytest.mark.parametrize("body", [
    b'{"model":"llama3.2","MODEL":"qwen3:480b-cloud"}',  # Go's decoder takes the last; its cloud check the exact one
    b'{"model":"llama3.2","model":"qwen3:480b-cloud"}',
    b'{"model":"a","mOdEl":"b","model":"a"}',
    b'{"model":"x","model":"x"}',
    b'{"Model":"llama3.2"}',
    '{"option\u017f":{},"model":"a"}'.encode(),  # LONG S folds onto s
    '{"\u212aeep_alive":1,"model":"a"}'.encode(),  # KELVIN SIGN folds onto k
    b'{"\\u212aeep_alive":1,"model":"a"}',
])
def test_bodies_decoders_could_read_differently_are_400(body: bytes) -> None:
    with pytest.raises(BadRequest, match="more than once|spells"):
        models.body_model(CHAT, body)


@pytest.mark.parametrize("body", [b"nope", b"[]", b'"x"', b'{"prompt":"x"}', b'{"model":3}', b'{"model":""}',
                                  b'{"model":null}', b'{"model":["a"]}'])
def test_bodies_without_a_usable_model_are_400(body: bytes) -> None:
    with pytest.raises(BadRequest):
        models.body_model(CHAT, body)


def test_show_falls_back_on_name() -> None:
    assert models.body_model(SHOW, b'{"name":"llama3.2"}') == "llama3.2"
    assert models.body_model(SHOW, b'{"model":"a","name":"b"}') == "a"
    assert models.body_model(SHOW, b'{"model":"","name":"b"}') == "b"
    with pytest.raises(BadRequest, match="spells"):
        models.body_model(SHOW, b'{"model":"","NAME":"b"}')


FORM = (b"--b0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
        b"Content-Type: audio/wav\r\n\r\nRIFF\x00\x01--b0un\r\n"
        b"--b0und\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper:large\r\n--b0und--\r\n")


def test_the_form_field_model() -> None:
    ct = b'multipart/form-data; boundary="b0und"'
    assert models.form_model(FORM, ct, b"/v1/audio/transcriptions") == "whisper:large"
    assert models.form_model(FORM, ct, b"/v1/audio/transcriptions?model=whisper:large") == "whisper:large"
    with pytest.raises(BadRequest, match="more than once"):
        models.form_model(FORM, ct, b"/v1/audio/transcriptions?model=other:cloud")
    only_query = FORM.replace(b'name="model"', b'name="language"')
    with pytest.raises(BadRequest, match="exactly one 'model' part"):
        models.form_model(only_query, ct, b"/x?model=q%3Acloud")  # FormValue would fall back on the query
    with pytest.raises(BadRequest):
        models.form_model(only_query, ct, b"/v1/audio/transcriptions")


@pytest.mark.parametrize("form,ct", [
    (FORM, b"application/json"),
    (FORM, b"multipart/form-data"),
    (FORM.replace(b'name="model"', b"name*=UTF-8''model"), b"multipart/form-data; boundary=b0und"),
    (FORM.replace(b'name="model"\r\n', b'name="model"\r\nContent-Transfer-Encoding: quoted-printable\r\n'),
     b"multipart/form-data; boundary=b0und"),
    (FORM[:-9], b"multipart/form-data; boundary=b0und"),
])
def test_forms_read_differently_are_refused(form: bytes, ct: bytes) -> None:
    with pytest.raises(BadRequest):
        models.form_model(form, ct, b"/v1/audio/transcriptions")


@pytest.mark.parametrize("text,seconds", [("5m", 300.0), ("1h30m", 5400.0), ("-1s", -1.0), ("0", 0.0),
                                          ("300ms", 0.3), ("1.5h", 5400.0), ("2h45m30.5s", 9930.5)])
def test_go_durations(text: str, seconds: float) -> None:
    assert models.go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "5min", "1d", "--1s"])
def test_go_durations_refused(text: str) -> None:
    with pytest.raises(ValueError):
        models.go_duration(text)


@pytest.mark.parametrize("body,refusal", [
    (b'{"keep_alive":-1}', Forbidden), (b'{"keep_alive":"-5m"}', Forbidden), (b'{"keep_alive":0}', Forbidden),
    (b'{"keep_alive":"0s"}', Forbidden), (b'{"keep_alive":"31m"}', Forbidden), (b'{"keep_alive":1801}', Forbidden),
    (b'{"Keep_Alive":"2h"}', BadRequest), (b'{"keep_alive":"soon"}', BadRequest), (b'{"keep_alive":true}', BadRequest),
    (b'{"keep_alive":"30m"}', None), (b'{"keep_alive":60}', None), (b'{"prompt":"x"}', None),
    (b'{"keep_alive":null}', None),
])
def test_keep_alive_limit(body: bytes, refusal: type[Exception] | None) -> None:
    key = KeyEntry("k", b"", max_keep_alive=1800.0)
    if refusal is None:
        models.check_keep_alive(key, body)
    else:
        with pytest.raises(refusal):
            models.check_keep_alive(key, body)
    models.check_keep_alive(KeyEntry("k", b""), b'{"keep_alive":-1}')  # without the field nothing changes


def test_listings_hide_cloud_models_from_keys_without_the_scope() -> None:
    body = b'{"models":[{"name":"qwen3:8b"},{"name":"qwen3:480b-cloud"},{"name":"llama3.2:latest"}]}'
    out = models.filter_listing(b"/api/tags", KeyEntry("k", b"", models=("qwen3:*",)), body)
    assert out == b'{"models":[{"name":"qwen3:8b"}]}'
    out = models.filter_listing(b"/api/tags", KeyEntry("k", b"", models=("qwen3:*",), cloud=True), body)
    assert out == b'{"models":[{"name":"qwen3:8b"},{"name":"qwen3:480b-cloud"}]}'
