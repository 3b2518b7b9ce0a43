"""GET /metrics through real sockets, read back with prometheus_client's own parser.

The counters must move by exactly what was sent, tokens included (the fake
Ollama counts 26 prompt tokens and num_predict completion tokens), and no
client may add series by inventing model names.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ADMIN_KEY, KEY, OTHER_KEY, Proxy, start_proxy
from guardproxy import __version__
from guardproxy.config.model import KeyEntry, MetricsSettings
from guardproxy.config.write import hash_key
from guardproxy.engine.metrics import BUCKETS, REASONS
from guardproxy.testing.fake_ollama import FakeOllama
from support.bodies import gen_body
from support.hosts import Fakes, Held, fakes, gate as hosts_gate, host  # noqa: F401 (fakes: a fixture)
from support.metric_names import HISTOGRAMS, SERIES
from support.ports import free_port
from support.raw_http import fetch, read_response, request_bytes

METRICS_KEY = "gp_metrics-key-0123456789abcdefghijklmnop"
KEYS = (KeyEntry("laptop", bytes.fromhex(hash_key(KEY))), KeyEntry("phone", bytes.fromhex(hash_key(OTHER_KEY))),
        KeyEntry("owner", bytes.fromhex(hash_key(ADMIN_KEY)), admin=True),
        KeyEntry("prometheus", bytes.fromhex(hash_key(METRICS_KEY)), metrics=True))

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


@pytest.fixture
async def gate(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Proxy]:
    p = await start_proxy(fake.port, tmp_path, keys=KEYS)
    try:
        yield p
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by name and labels, and each family's type, as Prometheus reads them."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples, types


async def scrape(port: int, key: str = METRICS_KEY) -> Samples:
    r = await fetch(port, "GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status == 200, r.body
    assert r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    return parse(r.body.decode())[0]


def value(s: Samples, name: str, **labels: str) -> float:
    """The sample's value; a series that is missing fails the test (a zero is read, never assumed)."""
    series = s.get(name, {})
    assert frozenset(labels.items()) in series, f"no sample {name}{labels}"
    return series[frozenset(labels.items())]


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How far a counter moved; a series not yet in `before` started at zero."""
    return value(after, name, **labels) - before.get(name, {}).get(frozenset(labels.items()), 0.0)


def generate(model: str, tokens: int) -> bytes:
    """Not streamed: post_many reads each answer whole before sending the next."""
    return gen_body(model, tokens=tokens, stream=False)


async def post_many(port: int, key: str, path: str, bodies: list[bytes]) -> list[int]:
    """Requests one after another on one keep-alive connection; their statuses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []
    try:
        for body in bodies:
            writer.write(request_bytes("POST", path, body, {"X-API-Key": key}))
            statuses.append((await asyncio.wait_for(read_response(reader), 10)).status)
    finally:
        writer.close()
    return statuses


async def test_counters_move_by_exactly_what_was_sent(gate: Proxy, fake: FakeOllama) -> None:
    before = await scrape(gate.port)
    assert await post_many(gate.port, KEY, "/api/generate", [generate("llama3.2", n) for n in (5, 7, 9)]) == [200] * 3
    chat = json.dumps({"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}],
                       "options": {"num_predict": 4}}).encode()  # streamed: Ollama's default
    r = await fetch(gate.port, "POST", "/api/chat", chat, {"X-API-Key": OTHER_KEY})
    assert r.status == 200 and b'"done":true' in r.body
    for wrong in ("gp_wrong-key-0123456789abcdefghijklmn", ""):
        assert (await fetch(gate.port, "GET", "/api/tags", headers={"X-API-Key": wrong})).status == 401
    assert (await fetch(gate.port, "POST", "/api/pull", b'{"model":"x"}', {"X-API-Key": OTHER_KEY})).status == 403
    after = await scrape(gate.port)

    assert moved(before, after, "guardproxy_requests_total", key="laptop", route="generate", code="200") == 3
    assert moved(before, after, "guardproxy_requests_total", key="phone", route="chat", code="200") == 1
    assert moved(before, after, "guardproxy_requests_total", key="-", route="tags", code="401") == 2
    assert moved(before, after, "guardproxy_requests_total", key="phone", route="pull", code="403") == 1
    assert moved(before, after, "guardproxy_requests_total", key="prometheus", route="metrics", code="200") == 1
    assert before.get("guardproxy_requests_total") is None  # (a counter without labels yet has no sample)
    assert sum(after["guardproxy_requests_total"].values()) == 8
    assert {r: moved(before, after, "guardproxy_refusals_total", reason=r) for r in REASONS} == {
        **dict.fromkeys(REASONS, 0.0), "unauthorized": 2.0, "forbidden": 1.0}
    # "llama3.2" is counted under the name the upstream lists it by.
    assert moved(before, after, "guardproxy_tokens_total", key="laptop", model="llama3.2:latest", kind="prompt") == 3 * 26
    assert moved(before, after, "guardproxy_tokens_total", key="laptop", model="llama3.2:latest", kind="completion") == 21
    assert moved(before, after, "guardproxy_tokens_total", key="phone", model="qwen3:8b", kind="prompt") == 26
    assert moved(before, after, "guardproxy_tokens_total", key="phone", model="qwen3:8b", kind="completion") == 4
    assert len(after["guardproxy_tokens_total"]) == 4  # nothing else had token counts

    for hist in ("guardproxy_request_duration_seconds", "guardproxy_time_to_first_byte_seconds"):
        assert moved(before, after, hist + "_count", route="generate") == 3
        assert moved(before, after, hist + "_bucket", route="generate", le="+Inf") == 3
        assert moved(before, after, hist + "_sum", route="generate") > 0
        les = [dict(labels)["le"] for labels in after[hist + "_bucket"] if dict(labels)["route"] == "generate"]
        assert sorted(les, key=float) == [str(float(b)) for b in BUCKETS] + ["+Inf"]
    # A refusal took no time to its first byte: no TTFB observed; its duration is.
    assert moved(before, after, "guardproxy_request_duration_seconds_count", route="tags") == 2
    assert frozenset({("route", "tags")}) not in after["guardproxy_time_to_first_byte_seconds_count"]

    assert value(after, "guardproxy_build_info", version=__version__) == 1
    assert value(after, "guardproxy_upstream_up", upstream=f"127.0.0.1:{fake.port}") == 1
    assert value(after, "guardproxy_upstream_in_flight", upstream=f"127.0.0.1:{fake.port}") == 0
    assert value(after, "guardproxy_queue_waiting") == 0
    assert value(after, "guardproxy_connections_open") >= 1  # the scrape's own
    assert value(after, "guardproxy_streams_active", key="laptop") == 0


async def test_every_series_has_the_names_top_and_the_dashboard_read(gate: Proxy) -> None:
    await post_many(gate.port, KEY, "/api/generate", [generate("llama3.2", 1)])
    r = await fetch(gate.port, "GET", "/metrics", headers={"X-API-Key": ADMIN_KEY})
    _, types = parse(r.body.decode())
    # (prometheus_client names a counter's family without its _total.)
    assert {name + "_total" if t == "counter" else name for name, t in types.items()} == SERIES
    assert {name for name, t in types.items() if t == "histogram"} == HISTOGRAMS


async def test_only_admin_and_metrics_keys_read_metrics_and_it_never_reaches_ollama(gate: Proxy, fake: FakeOllama) -> None:
    async def status(method: str, headers: dict[str, str]) -> int:
        return (await fetch(gate.port, method, "/metrics", headers=headers)).status

    assert await status("GET", {}) == 401
    assert await status("GET", {"X-API-Key": "gp_wrong-key-0123456789abcdefghijklmn"}) == 401
    assert await status("GET", {"X-API-Key": KEY}) == 403
    assert await status("GET", {"Authorization": f"Bearer {OTHER_KEY}"}) == 403
    assert await status("GET", {"X-API-Key": METRICS_KEY}) == 200
    assert await status("GET", {"Authorization": f"Bearer {METRICS_KEY}"}) == 200
    assert await status("GET", {"Authorization": f"Bearer {ADMIN_KEY}"}) == 200
    r = await fetch(gate.port, "POST", "/metrics", b"{}", {"X-API-Key": ADMIN_KEY})
    assert (r.status, r.header("allow")) == (405, "GET")
    assert await status("DELETE", {"X-API-Key": ADMIN_KEY}) == 405  # an admin key's unknown routes are forwarded; this is not
    # A metrics key is no key for anything else.
    assert (await fetch(gate.port, "GET", "/api/tags", headers={"X-API-Key": METRICS_KEY})).status == 200
    assert not any(r.target.startswith("/metrics") for r in fake.requests)
    after = await scrape(gate.port)
    assert value(after, "guardproxy_refusals_total", reason="forbidden") == 2
    assert value(after, "guardproxy_refusals_total", reason="unauthorized") == 2


async def test_made_up_model_names_add_no_series(gate: Proxy) -> None:
    await scrape(gate.port)  # the upstream's model list is read from the first scrape on
    flood = [generate(f"made-up-{i}", 1) for i in range(150)] + [generate(f"x{i}:1b-cloud", 1) for i in range(50)]
    assert await post_many(gate.port, ADMIN_KEY, "/api/generate", flood + [generate("Mistral:7B", 2)]) == [200] * 201
    after = await scrape(gate.port)
    tokens = {dict(labels)["model"] for labels in after["guardproxy_tokens_total"]}
    assert tokens == {"other", "mistral:7b"}
    assert value(after, "guardproxy_tokens_total", key="owner", model="other", kind="prompt") == 200 * 26
    assert value(after, "guardproxy_tokens_total", key="owner", model="other", kind="completion") == 200
    assert value(after, "guardproxy_tokens_total", key="owner", model="mistral:7b", kind="completion") == 2
    assert len(after["guardproxy_requests_total"]) == 2  # (owner, generate, 200) and the first scrape


async def test_tokens_counted_before_the_first_scrape_get_their_labels(gate: Proxy, fake: FakeOllama) -> None:
    bodies = [generate("llama3.2", 3), generate("invented", 5), generate("qwen3:8b", 1)]
    assert await post_many(gate.port, KEY, "/api/generate", bodies) == [200] * 3
    assert not any(r.target == "/api/tags" for r in fake.requests)  # nobody has asked for metrics yet
    after = await scrape(gate.port)
    assert {(dict(k)["model"], dict(k)["kind"]): v for k, v in after["guardproxy_tokens_total"].items()} == {
        ("llama3.2:latest", "prompt"): 26, ("llama3.2:latest", "completion"): 3, ("other", "prompt"): 26,
        ("other", "completion"): 5, ("qwen3:8b", "prompt"): 26, ("qwen3:8b", "completion"): 1}


async def test_a_running_stream_and_its_upstream_call_show_while_they_last(gate: Proxy, fake: FakeOllama) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
    writer.write(request_bytes("POST", "/api/generate", gen_body("llama3.2", tokens=30, delay=0.02, stream=True),
                               {"X-API-Key": KEY, "Connection": "close"}))
    await asyncio.wait_for(reader.readuntil(b"tok0"), 10)
    during = await scrape(gate.port)
    assert value(during, "guardproxy_streams_active", key="laptop") == 1
    assert value(during, "guardproxy_upstream_in_flight", upstream=f"127.0.0.1:{fake.port}") == 1
    assert value(during, "guardproxy_connections_open") == 2
    await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    after = await scrape(gate.port)
    assert value(after, "guardproxy_streams_active", key="laptop") == 0
    assert value(after, "guardproxy_upstream_in_flight", upstream=f"127.0.0.1:{fake.port}") == 0
    assert value(after, "guardproxy_tokens_total", key="laptop", model="llama3.2:latest", kind="completion") == 30


async def test_an_upstream_that_does_not_answer_is_down(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    p = await start_proxy(port, tmp_path, keys=KEYS)
    try:
        assert value(await scrape(p.port), "guardproxy_upstream_up", upstream=f"127.0.0.1:{port}") == 0
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()


async def test_the_separate_listener_needs_no_key_and_serves_nothing_else(fake: FakeOllama, tmp_path: Path) -> None:
    p = await start_proxy(fake.port, tmp_path, keys=KEYS, metrics=MetricsSettings(listen=("127.0.0.1", 0)))
    try:
        assert p.server.metrics_listener is not None
        port = p.server.metrics_listener.port
        await post_many(p.port, KEY, "/api/generate", [generate("llama3.2", 2)])
        r = await fetch(port, "GET", "/metrics")
        assert (r.status, r.header("content-type")) == (200, "text/plain; version=0.0.4; charset=utf-8")
        samples, _ = parse(r.body.decode())
        assert value(samples, "guardproxy_tokens_total", key="laptop", model="llama3.2:latest", kind="completion") == 2
        r = await fetch(port, "HEAD", "/metrics")
        assert r.status == 200 and r.body == b"" and int(r.header("content-length") or 0) > 1000
        assert (await fetch(port, "GET", "/api/tags")).status == 404
        assert (await fetch(port, "POST", "/metrics", b"x")).status == 405
        assert (await fetch(port, "GET", "/metrics?x=1")).status == 200
        # The main listener still wants a key, and scrapes of the separate one are no requests of the gate's.
        assert (await fetch(p.port, "GET", "/metrics")).status == 401
        after = await scrape(p.port)
        assert set(after["guardproxy_requests_total"]) == {
            frozenset({("key", "laptop"), ("route", "generate"), ("code", "200")}),
            frozenset({("key", "-"), ("route", "metrics"), ("code", "401")})}
        assert not any(r.target.startswith("/metrics") for r in fake.requests)
    finally:
        await p.server.stop(grace=0)
        p.server.access_log.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_each_host_has_its_own_series_by_name(fakes: Fakes, tmp_path: Path) -> None:
    """With [[upstreams]] the `upstream` label is the host's name, up from its health checks,
    and the models of every host's list are labels."""
    a = await fakes.start(0, models=["llama3.2"])
    b = await fakes.start(1, models=["qwen3:8b"])
    async with hosts_gate(tmp_path, (host(0, a), host(1, b)), keys=KEYS) as p:
        held = await Held.open(p.port, "qwen3:8b", KEY)
        during = await scrape(p.port)
        assert value(during, "guardproxy_upstream_up", upstream="gpu-a") == 1
        assert value(during, "guardproxy_upstream_up", upstream="gpu-b") == 1
        assert value(during, "guardproxy_upstream_in_flight", upstream="gpu-b") == 1
        assert value(during, "guardproxy_upstream_in_flight", upstream="gpu-a") == 0
        held.writer.close()
        await post_many(p.port, KEY, "/api/generate", [generate("llama3.2", 3), generate("qwen3:8b", 4)])
        await a.close()  # refused connections take gpu-a down at its next check
        await asyncio.wait_for(p.server.health.next_round(2), 5)
        after = await scrape(p.port)
        assert value(after, "guardproxy_upstream_up", upstream="gpu-a") == 0
        assert value(after, "guardproxy_upstream_up", upstream="gpu-b") == 1
        assert value(after, "guardproxy_tokens_total", key="laptop", model="llama3.2:latest", kind="completion") == 3
        assert value(after, "guardproxy_tokens_total", key="laptop", model="qwen3:8b", kind="completion") == 4
