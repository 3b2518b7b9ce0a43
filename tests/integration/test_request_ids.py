"""X-Request-Id: the client's when it is safe, else a new one; to Ollama, back to the client, into the log."""

from __future__ import annotations

import asyncio
import re

import pytest

from conftest import KEY, Proxy
from guardproxy.testing.fake_ollama import FakeOllama
from support.raw_http import fetch, read_response, request_bytes

NEW = re.compile(r"[0-9a-f]{24}")


@pytest.mark.parametrize("sent,kept", [("client.req-42_x", True), ("a" * 64, True), ("a" * 65, False),
                                       ("bad id", False), ("{{x}}", False), (None, False)])
async def test_the_id_goes_to_ollama_back_to_the_client_and_into_the_log(proxy: Proxy, fake: FakeOllama,
                                                                         sent: str | None, kept: bool) -> None:
    headers = {"X-API-Key": KEY} | ({"X-Request-Id": sent} if sent is not None else {})
    r = await fetch(proxy.port, "GET", "/api/tags", headers=headers)
    assert r.status == 200
    rid = r.header("x-request-id")
    assert rid is not None and [v for k, v in r.headers if k == "x-request-id"] == [rid]
    if kept:
        assert rid == sent
    else:
        assert NEW.fullmatch(rid)
    (seen,) = fake.requests
    assert [v for k, v in seen.headers if k.lower() == "x-request-id"] == [rid]
    assert proxy.log_lines()[-1]["request_id"] == rid


async def test_new_ids_differ_and_every_answer_carries_one(proxy: Proxy, fake: FakeOllama) -> None:
    ids = []
    for method, target, headers in [("GET", "/health", {}), ("GET", "/api/tags", {}),
                                    ("GET", "/api/tags", {"X-API-Key": KEY}),
                                    ("OPTIONS", "/api/tags", {"Origin": "https://app.example",
                                                              "Access-Control-Request-Method": "POST"})]:
        r = await fetch(proxy.port, method, target, headers=headers)
        rid = r.header("x-request-id")
        assert rid is not None and NEW.fullmatch(rid), (target, r.status)
        ids.append(rid)
    assert len(set(ids)) == len(ids)
    assert [line["request_id"] for line in proxy.log_lines()] == ids


async def test_a_stream_and_a_refusal_carry_the_clients_id(proxy: Proxy, fake: FakeOllama) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    body = b'{"model":"llama3.2","prompt":"hi","options":{"num_predict":3}}'
    writer.write(request_bytes("POST", "/api/generate", body, {"X-API-Key": KEY, "X-Request-Id": "stream-1"}))
    writer.write(request_bytes("POST", "/api/pull", b"{}", {"X-API-Key": KEY, "X-Request-Id": "refused-2"}))
    first = await asyncio.wait_for(read_response(reader), 10)
    second = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert (first.status, first.header("transfer-encoding"), first.header("x-request-id")) == (200, "chunked", "stream-1")
    assert (second.status, second.header("x-request-id")) == (403, "refused-2")
    assert [(line["status"], line["request_id"]) for line in proxy.log_lines()] == [(200, "stream-1"), (403, "refused-2")]
