"""Forwarding on a clock that jumps (support/virtual_gate.py): connect, first-byte and read deadlines,
failover before the first byte (refused, 503, 429) and nothing replayed once bytes were written, and
the pool's idle expiry.  Each deadline is checked just before it (nothing yet) and at it.  The socket
tests keep one of each family end to end (test_gate_upstream.py: first byte; test_hosts_faults.py:
a 503 failed over)."""

from __future__ import annotations

import json
from typing import Any

from conftest import make_config
from guardproxy.config.model import Routing, Timeouts, Upstream, UpstreamHost
from support.raw_http import request_bytes
from support.virtual import response, settle
from support.virtual_gate import GENERATE, LAPTOP, OWNER, STREAM_HEAD, Gate, chunk, final_line, run

A, B = ("127.0.0.2", 11434), ("127.0.0.3", 11434)


def two_hosts(**overrides: Any) -> Any:
    """gpu-a (the model loaded: first choice) and gpu-b; their lists read by a first health round."""
    return make_config(11434, upstreams=(UpstreamHost("gpu-a", Upstream(*A), max_concurrent=4),
                                         UpstreamHost("gpu-b", Upstream(*B), max_concurrent=4)),
                       routing=Routing(health_interval=3600.0), **overrides)


async def two_host_gate(**overrides: Any) -> Gate:
    g = Gate(two_hosts(**overrides))
    g.hosts["gpu-a"].loaded = ("llama3.2:latest",)
    await g.server.health.next_round()
    return g


async def version(g: Gate) -> None:
    """GET /api/version, answered by the host at once (its connection then goes back to the pool)."""
    client = g.send("GET", "/api/version", None, OWNER)
    await settle()
    (sent,) = g.host.pending
    sent.reply(response(200))
    assert (await g.response(client))[0] == 200


# --- deadlines ----------------------------------------------------------------------------------

def test_a_host_that_never_answers_is_a_504_at_first_byte_and_is_closed() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(first_byte=300.0, read=10.0)))
        t0 = g.loop.time()
        client = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await g.until_time(t0 + 299.0)
        assert not client.written and not g.host.connections[0].is_closing()
        status, _, body = await g.response(client)
        assert status == 504 and json.loads(body) == {"error": "upstream first byte timeout"}
        assert 300.0 <= g.loop.time() - t0 <= 301.0   # (the deadline sweep ticks every eighth, at most 1 s)
        assert len(g.host.connections) == 1 and g.host.connections[0].aborted   # closed: Ollama stops generating
        await settle()
        assert g.log.lines[-1]["outcome"] == "upstream_error" and g.log.lines[-1]["status"] == 504
        await g.stop()
    run(scenario)


def test_a_host_trickling_102_processing_still_gets_its_504_at_first_byte() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(first_byte=300.0)))
        t0 = g.loop.time()
        client = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        (sent,) = g.host.work
        for i in range(1, 40):   # every 10 s, well past the deadline
            g.loop.call_at(t0 + 10.0 * i, lambda: sent.transport.is_closing() or sent.reply(
                b"HTTP/1.1 102 Processing\r\n\r\n"))
        status, _, _ = await g.response(client)
        assert status == 504 and 300.0 <= g.loop.time() - t0 <= 301.0
        await g.stop()
    run(scenario)


def test_a_first_byte_slower_than_the_read_timeout_is_served_within_first_byte() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(first_byte=300.0, read=60.0)))
        t0 = g.loop.time()
        client = g.send("POST", "/api/generate", GENERATE, LAPTOP)   # a cold model load
        await settle()
        await g.until_time(t0 + 290.0)
        g.host.work[0].reply(final_line(1, 1))
        status, _, body = await g.response(client)
        assert status == 200 and json.loads(body)["done"] is True
        await g.stop()
    run(scenario)


def test_a_stream_that_stalls_is_cut_at_the_read_timeout_without_an_invented_end() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(read=60.0)))
        conn, client = g.connect()
        conn.data_received(request_bytes("POST", "/api/generate", GENERATE, LAPTOP))
        await settle()
        (sent,) = g.host.work
        sent.reply(STREAM_HEAD + chunk(b'{"response":"a"}\n'))
        await g.until_time(g.loop.time() + 50.0)
        sent.reply(chunk(b'{"response":"b"}\n'))   # a read: the silence counts from here
        t0 = g.loop.time()
        await g.until_time(t0 + 59.0)
        assert not client.is_closing() and not sent.transport.is_closing()
        await g.closed(conn)
        assert 60.0 <= g.loop.time() - t0 <= 62.0   # within two sweeps (an eighth of 60 s, at most 1 s each)
        assert client.is_closing() and sent.transport.aborted
        assert bytes(client.written).endswith(chunk(b'{"response":"b"}\n'))   # truncated where it stalled
        await settle()
        line = g.log.lines[-1]
        assert (line["status"], line["outcome"], line["error"]) == (200, "upstream_error", "upstream read timeout")
        await g.stop()
    run(scenario)


def test_a_connect_that_hangs_is_a_504_at_the_connect_timeout() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(connect=10.0)))
        g.host.hang = True
        t0 = g.loop.time()
        client = g.send("GET", "/api/tags", None, LAPTOP)
        await g.until_time(t0 + 9.9)
        assert not client.written
        status, _, body = await g.response(client)
        assert status == 504 and json.loads(body) == {"error": "upstream connect timeout"}
        assert 10.0 <= g.loop.time() - t0 <= 10.1
        await g.stop()
    run(scenario)


def test_a_refused_connect_is_a_502_at_once() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434))
        g.host.refuse = True
        t0 = g.loop.time()
        status, _, body = await g.response(g.send("GET", "/api/tags", None, LAPTOP))
        assert status == 502 and json.loads(body) == {"error": "upstream unavailable"}
        assert g.loop.time() == t0
        await g.stop()
    run(scenario)


# --- failover before the first byte, and nothing replayed after it ---------------------------------

def test_a_refused_host_is_failed_over_at_once_and_taken_down() -> None:
    async def scenario() -> None:
        g = await two_host_gate()
        a, b = g.hosts["gpu-a"], g.hosts["gpu-b"]
        a.refuse = True   # the host's process is gone: its connections with it
        for t in a.connections:
            t.hang_up()
        await settle()
        t0 = g.loop.time()
        client = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        (sent,) = b.work
        sent.reply(final_line(1, 1))
        assert (await g.response(client))[0] == 200 and g.loop.time() == t0
        assert g.server.hosts.up_count() == 1   # refused: down at once, until its checks say otherwise
        await settle()
        assert g.log.lines[-1]["upstream"] == "gpu-b"
        await g.stop()
    run(scenario)


def failover_on(status: int) -> None:
    async def scenario() -> None:
        g = await two_host_gate()
        a, b = g.hosts["gpu-a"], g.hosts["gpu-b"]
        client = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        (on_a,) = a.work
        on_a.reply(response(status, b'{"error":"server busy, please try again.  maximum pending requests exceeded"}',
                            "Busy"))
        await settle()
        (on_b,) = b.work
        assert on_b.body == on_a.body   # the same request, sent again: the host ran nothing
        on_b.reply(final_line(1, 1))
        status_seen, _, _ = await g.response(client)
        assert status_seen == 200 and client.written.count(b"HTTP/1.1") == 1   # a's answer never reached it
        # a's breaker is open for 1 s: meanwhile the warm host is passed over; after it, it is tried again.
        t0 = g.loop.time()
        during = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        assert len(a.work) == 1 and len(b.work) == 2
        b.work[1].reply(final_line(1, 1))
        assert (await g.response(during))[0] == 200
        await g.until_time(t0 + 1.0)
        after = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        assert len(a.work) == 2 and len(b.work) == 2
        a.work[1].reply(final_line(1, 1))
        assert (await g.response(after))[0] == 200
        await g.stop()
    run(scenario)


def test_a_503_before_the_first_byte_goes_to_another_host() -> None:
    failover_on(503)


def test_a_429_before_the_first_byte_goes_to_another_host() -> None:
    failover_on(429)


def test_a_generation_is_not_failed_over_after_its_first_byte_timeout() -> None:
    async def scenario() -> None:
        g = await two_host_gate(timeouts=Timeouts(first_byte=120.0))
        a, b = g.hosts["gpu-a"], g.hosts["gpu-b"]
        t0 = g.loop.time()
        status, _, _ = await g.response(g.send("POST", "/api/generate", GENERATE, LAPTOP))
        assert status == 504 and 120.0 <= g.loop.time() - t0 <= 121.0
        assert len(a.work) == 1 and b.work == []   # a second host would start a second model load
        await g.stop()
    run(scenario)


def test_not_even_a_read_is_failed_over_after_its_first_byte_timeout() -> None:
    async def scenario() -> None:
        g = await two_host_gate(timeouts=Timeouts(first_byte=120.0))
        a, b = g.hosts["gpu-a"], g.hosts["gpu-b"]
        t0 = g.loop.time()
        status, _, _ = await g.response(g.send("POST", "/api/show", b'{"model":"llama3.2"}', LAPTOP))
        assert status == 504 and 120.0 <= g.loop.time() - t0 <= 121.0
        assert len(a.work) == 1 and b.work == []
        await g.stop()
    run(scenario)


def test_a_generation_a_host_read_and_dropped_is_not_sent_to_another_host() -> None:
    async def scenario() -> None:
        g = await two_host_gate()
        a, b = g.hosts["gpu-a"], g.hosts["gpu-b"]
        client = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        (sent,) = a.work
        sent.transport.hang_up()   # read, then reset before any answer: it may have run
        status, _, body = await g.response(client)
        assert status == 502 and json.loads(body) == {"error": "upstream closed the connection"}
        assert b.work == [] and len(a.work) == 1
        await g.stop()
    run(scenario)


def test_a_read_a_host_dropped_before_its_answer_goes_to_another_host() -> None:
    async def scenario() -> None:
        g = await two_host_gate()
        a, b = g.hosts["gpu-a"], g.hosts["gpu-b"]
        client = g.send("POST", "/api/show", b'{"model":"llama3.2"}', LAPTOP)
        await settle()
        (sent,) = a.work
        sent.transport.hang_up()   # on a pooled connection: perhaps one the host had closed, so ...
        await settle()
        (_, fresh) = a.work        # ... once more on a fresh one to the same host
        assert fresh.transport is not sent.transport and b.work == []
        fresh.transport.hang_up()  # that too: another host
        await settle()
        (again,) = b.work
        assert again.body == sent.body
        again.reply(response(200, b'{"modelfile":""}'))
        assert (await g.response(client))[0] == 200
        await g.stop()
    run(scenario)


def test_a_stream_cut_mid_way_is_not_sent_again() -> None:
    async def scenario() -> None:
        g = await two_host_gate()
        a, b = g.hosts["gpu-a"], g.hosts["gpu-b"]
        conn, client = g.connect()
        conn.data_received(request_bytes("POST", "/api/generate", GENERATE, LAPTOP))
        await settle()
        (sent,) = a.work
        sent.reply(STREAM_HEAD + chunk(b'{"response":"a"}\n'))
        sent.transport.hang_up()   # the host dies mid-stream
        await g.closed(conn)
        assert not bytes(client.written).endswith(b"0\r\n\r\n") and b.work == []
        await settle()
        assert (g.log.lines[-1]["upstream"], g.log.lines[-1]["outcome"]) == ("gpu-a", "upstream_error")
        await g.stop()
    run(scenario)


def test_a_mutation_a_host_read_and_dropped_is_not_sent_again() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434))
        g.host.answer = None
        await version(g)   # the connection goes back to the pool
        client = g.send("POST", "/api/create", b'{"model":"m","from":"llama3.2"}', OWNER)
        await settle()
        assert [s.target for s in g.host.requests] == [b"/api/version", b"/api/create"]
        g.host.connections[0].hang_up()   # read, then dropped
        status, _, _ = await g.response(client)
        assert status == 502 and len(g.host.connections) == 1   # no fresh connection, no second copy
        assert len(g.host.requests) == 2
        await g.stop()
    run(scenario)


def test_a_read_a_host_dropped_is_sent_again_on_a_fresh_connection() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434))
        g.host.answer = None
        await version(g)
        client = g.send("GET", "/api/version", None, OWNER)
        await settle()
        g.host.connections[0].hang_up()
        await settle()
        assert len(g.host.connections) == 2 and g.host.requests[-1].transport is g.host.connections[1]
        g.host.requests[-1].reply(response(200))
        assert (await g.response(client))[0] == 200
        await g.stop()
    run(scenario)


# --- the pool ------------------------------------------------------------------------------------

def test_an_idle_pooled_connection_is_closed_at_upstream_idle() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(upstream_idle=60.0)))
        g.host.answer = None
        await version(g)
        t0 = g.loop.time()
        await g.until_time(t0 + 59.9)
        assert not g.host.connections[0].is_closing()
        await g.until_time(t0 + 60.0)
        await settle()
        assert g.host.connections[0].closed  # closed by the gate, with no request to prompt it
        await version(g)
        t1 = g.loop.time()
        await g.until_time(t1 + 30.0)
        await version(g)                     # reused, and idle again from now
        assert len(g.host.connections) == 2
        t2 = g.loop.time()
        await g.until_time(t2 + 59.9)
        assert not g.host.connections[1].is_closing()
        await g.until_time(t2 + 60.0)
        await settle()
        assert g.host.connections[1].closed
        await version(g)
        assert len(g.host.connections) == 3
        await g.stop()
    run(scenario)
