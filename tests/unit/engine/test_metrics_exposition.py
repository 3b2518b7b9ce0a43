"""The metrics' own exposition and label bounds, read back with prometheus_client's parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.decisions import routes
from guardproxy.decisions.policy import Banned, BudgetExceeded, RateLimited
from guardproxy.engine import metrics
from guardproxy.engine.accesslog import LogRecord
from guardproxy.engine.listed_models import listed_name
from guardproxy.engine.metrics import Gauges, Metrics, UpstreamState, refusal_reason
from guardproxy.engine.slots import QueueTimeout
from guardproxy.wire import errors

GAUGES = Gauges(3, 1, (UpstreamState("gpu-a", True, 2),))
KNOWN = frozenset({"llama3.2:latest", "qwen3:8b", "hf.co/org/model:q4"})


def record(key: str | None, status: int = 200, model: str | None = None, prompt: int | None = None,
           completion: int | None = None) -> LogRecord:
    r = LogRecord.new("127.0.0.1", 100)
    r.key, r.status, r.model, r.prompt_tokens, r.completion_tokens = key, status, model, prompt, completion
    return r


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(m.exposition(GAUGES).decode()) for s in f.samples}


def test_label_values_with_quotes_and_backslashes_read_back_as_they_were_and_controls_as_escapes() -> None:
    m = Metrics(lambda: KNOWN)
    odd = 'a "quoted"\\name\nwith a newline\x1b]0;PWNED\x07\x1b[2J\u202e'
    shown = 'a "quoted"\\name\\nwith a newline\\x1b]0;PWNED\\x07\\x1b[2J\\u202e'
    m.ended(record(odd, 200, "qwen3:8b", 26, 4), routes.route_for(b"POST", b"/api/chat"), 0.3, 0.1)
    text = m.exposition(GAUGES).decode()
    assert not any(c in text for c in "\x1b\x07\u202e")
    got = samples(m)
    assert got["guardproxy_requests_total", frozenset({("key", shown), ("route", "chat"), ("code", "200")})] == 1
    assert got["guardproxy_tokens_total", frozenset({("key", shown), ("model", "qwen3:8b"), ("kind", "completion")})] == 4


def test_histograms_are_cumulative_with_their_sum_and_count() -> None:
    m = Metrics(lambda: KNOWN)
    route = routes.route_for(b"POST", b"/api/generate")
    for seconds in (0.004, 0.005, 0.3, 700.0):  # 0.005 is in the 5 ms bucket (le: less or equal)
        m.ended(record("k"), route, seconds, seconds)
    got = samples(m)

    def bucket(le: str) -> float:
        return got["guardproxy_request_duration_seconds_bucket", frozenset({("route", "generate"), ("le", le)})]
    assert (bucket("0.005"), bucket("0.25"), bucket("0.5"), bucket("600.0"), bucket("+Inf")) == (2, 2, 3, 3, 4)
    assert got["guardproxy_request_duration_seconds_count", frozenset({("route", "generate")})] == 4
    assert got["guardproxy_request_duration_seconds_sum", frozenset({("route", "generate")})] == pytest.approx(700.309)
    assert got["guardproxy_time_to_first_byte_seconds_count", frozenset({("route", "generate")})] == 4
    assert got["guardproxy_upstream_in_flight", frozenset({("upstream", "gpu-a")})] == 2
    assert got["guardproxy_connections_open", frozenset()] == 3 and got["guardproxy_queue_waiting", frozenset()] == 1


def test_model_labels_are_listed_names_or_other() -> None:
    assert listed_name("llama3.2", KNOWN) == "llama3.2:latest"
    assert listed_name("Llama3.2:Latest", KNOWN) == "llama3.2:latest"
    assert listed_name("registry.ollama.ai/library/qwen3:8b", KNOWN) == "qwen3:8b"
    assert listed_name("hf.co/org/model:q4", KNOWN) == "hf.co/org/model:q4"
    assert listed_name("qwen3", KNOWN) == "other"  # qwen3:latest is not listed
    assert listed_name("localhost:5000/llama3.2", KNOWN) == "other"


def test_remembered_labels_and_names_waiting_for_the_list_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_MODEL_LABELS", 10)
    monkeypatch.setattr(metrics, "MAX_PENDING", 5)
    known: frozenset[str] | None = None
    m = Metrics(lambda: known)
    gen = routes.route_for(b"POST", b"/api/generate")
    for _ in range(20):  # one name many times is one name waiting
        m.ended(record("k", 200, "qwen3:8b", 1, 1), gen, 0.1, 0.1)
    for i in range(8):  # before the list is known: four more names wait for it, the rest are "other" at once
        m.ended(record("k", 200, f"made-up-{i}", 1, 1), gen, 0.1, 0.1)
    m.ended(record("k", 200, "llama3.2", 1, 1), gen, 0.1, 0.1)
    assert len(m.tokens) == 6
    assert samples(m).get(("guardproxy_tokens_total", frozenset({("key", "k"), ("model", "other"), ("kind", "prompt")}))) == 5
    known = KNOWN  # the list arrives: the waiting names get their labels at the next scrape
    got = samples(m)
    assert {dict(k)["model"] for name, k in got if name == "guardproxy_tokens_total"} == {"other", "qwen3:8b"}
    assert got["guardproxy_tokens_total", frozenset({("key", "k"), ("model", "other"), ("kind", "prompt")})] == 9
    assert got["guardproxy_tokens_total", frozenset({("key", "k"), ("model", "qwen3:8b"), ("kind", "prompt")})] == 20
    for i in range(100):
        m.ended(record("k", 200, f"flood-{i}", 1, 1), gen, 0.1, 0.1)
        assert len(m._labels) <= 10
    m.ended(record("k", 200, "llama3.2", 1, 1), gen, 0.1, 0.1)
    assert set(m.tokens) == {("k", "other"), ("k", "qwen3:8b"), ("k", "llama3.2:latest")}


@pytest.mark.parametrize("err,reason", [
    (errors.Unauthorized(), "unauthorized"), (errors.Forbidden(), "forbidden"), (routes.NotFound(), "forbidden"),
    (RateLimited(), "rate"), (Banned(), "ban"), (BudgetExceeded(), "budget"), (errors.PayloadTooLarge(), "too_large"),
    (errors.HeadTooLarge(), "too_large"), (errors.UriTooLong(), "too_large"), (errors.BadRequest(), "bad_request"),
    (errors.RequestTimeout(), "bad_request"), (errors.MethodNotAllowed(), "bad_request"),
    (errors.VersionNotSupported(), "bad_request"), (QueueTimeout(), "busy"),
    (errors.ServiceUnavailable("too many connections"), "busy"),
    (errors.BadGateway(), None), (errors.GatewayTimeout(), None), (errors.GuardError(), None),
])
def test_refusal_reasons(err: errors.GuardError, reason: str | None) -> None:
    assert refusal_reason(err) == reason
    assert reason is None or reason in metrics.REASONS
