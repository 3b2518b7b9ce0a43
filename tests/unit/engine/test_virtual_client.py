"""The client connection's deadlines on a clock that jumps (support/virtual_gate.py): the request head,
an idle keep-alive connection, the request body (silence and whole), a client that stops reading,
a lingering close, and pipelined requests.  Each deadline is checked just before it (nothing yet)
and at it (the exact answer or close).  test_timeouts_and_caps.py keeps these over real sockets
where the kernel's part matters (backpressure, resets)."""

from __future__ import annotations

import asyncio
import json

from conftest import KEY, make_config
from guardproxy.config.model import Timeouts, TrafficLimits
from guardproxy.engine.client import ClientConnection
from support.raw_http import request_bytes
from support.virtual import MemoryTransport, response, settle
from support.virtual_gate import GENERATE, LAPTOP, STREAM_HEAD, Gate, chunk, final_line, run

UNFINISHED_HEAD = b"GET /api/tags HTTP/1.1\r\nHost: x\r\n"


def client_sends(conn: ClientConnection, t: MemoryTransport, data: bytes) -> None:
    if not t.is_closing():
        conn.data_received(data)


def test_a_head_that_never_ends_is_a_408_at_the_header_timeout_from_its_first_byte() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(header=10.0, keepalive=100.0)))
        conn, t = g.connect()
        t0 = g.loop.time()
        await g.until_time(t0 + 6.0)          # connected, silent: within the first wait (the header timeout)
        conn.data_received(UNFINISHED_HEAD)   # the head starts now and never ends
        await g.until_time(t0 + 15.9)
        assert not t.written and not t.is_closing()
        status, fields, body = await g.response(t)
        assert status == 408 and fields["Connection"] == "close" and json.loads(body)["error"]
        assert 16.0 <= g.loop.time() - t0 <= 16.1   # 10 s from the head's first byte, not from the connect
        await g.closed(conn)
        await g.until_time(g.loop.time() + 2.0)      # (a lingering close)
        assert t.is_closing() and not g.host.requests
        assert [(line["status"], line["outcome"]) for line in g.log.lines] == [(408, "refused")]
        await g.stop()
    run(scenario)


def test_a_connection_that_never_sends_is_closed_silently_at_the_header_timeout() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(header=10.0, keepalive=100.0)))
        conn, t = g.connect()
        t0 = g.loop.time()
        await g.until_time(t0 + 9.9)
        assert not t.is_closing()
        await g.closed(conn)
        assert 10.0 <= g.loop.time() - t0 <= 10.1 and t.is_closing() and not t.written
        await g.stop()
    run(scenario)


def test_a_head_dripped_a_byte_a_second_still_meets_the_deadline() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(header=10.0)))
        conn, t = g.connect()
        t0 = g.loop.time()
        for i, byte in enumerate(b"GET /api/tags HTTP/1.1\r\nX-A: " + b"a" * 100):
            g.loop.call_at(t0 + i, client_sends, conn, t, bytes([byte]))   # every byte is news, none puts it off
        status, _, _ = await g.response(t)
        assert status == 408 and 10.0 <= g.loop.time() - t0 <= 10.1
        await g.stop()
    run(scenario)


def test_the_header_deadline_applies_to_every_request_on_a_connection() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(header=10.0, keepalive=100.0)))
        conn, t = g.connect()
        conn.data_received(request_bytes("GET", "/health"))
        assert (await g.response(t))[0] == 200
        await g.until_time(g.loop.time() + 50.0)   # idle, within keepalive
        t0 = g.loop.time()
        conn.data_received(UNFINISHED_HEAD)
        status, _, _ = await g.response(t)
        assert status == 408 and 10.0 <= g.loop.time() - t0 <= 10.1
        await g.stop()
    run(scenario)


def test_an_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(keepalive=30.0, header=5.0)))
        conn, t = g.connect()
        conn.data_received(request_bytes("GET", "/health"))
        assert (await g.response(t))[0] == 200
        t0 = g.loop.time()
        await g.until_time(t0 + 29.9)
        assert not t.is_closing()
        await g.closed(conn)
        assert t.is_closing() and 30.0 <= g.loop.time() - t0 <= 30.1
        assert t.written.count(b"HTTP/1.1") == 1   # closed without a word: nothing was asked
        await g.stop()
    run(scenario)


def test_a_body_that_stops_is_a_408_at_the_body_timeout_after_its_last_byte() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(body=30.0)))
        conn, t = g.connect()
        whole = request_bytes("POST", "/api/generate", GENERATE, LAPTOP)
        conn.data_received(whole[:-30])
        t0 = g.loop.time()
        await g.until_time(t0 + 20.0)
        conn.data_received(whole[-30:-20])   # a read: silence counts again from here
        await g.until_time(t0 + 49.9)
        assert not t.written
        status, fields, body = await g.response(t)
        assert status == 408 and fields["Connection"] == "close"
        assert json.loads(body) == {"error": "request body timeout"}
        assert 50.0 <= g.loop.time() - t0 <= 50.1 and not g.host.requests
        await g.stop()
    run(scenario)


def test_a_trickled_body_meets_body_total_and_holds_no_slot_meanwhile() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(body=30.0, body_total=60.0),
                             limits=TrafficLimits(max_concurrent=1, queue_timeout=5.0)))
        conn, t = g.connect()
        whole = request_bytes("POST", "/api/generate", GENERATE, LAPTOP)
        head_end = whole.index(b"\r\n\r\n") + 4
        conn.data_received(whole[:head_end + 1])
        t0 = g.loop.time()
        other = g.send("POST", "/api/generate", GENERATE, LAPTOP)   # the slot is free: the trickler holds none
        await settle()
        g.host.work[0].reply(final_line(1, 1))
        assert (await g.response(other))[0] == 200
        for i, byte in enumerate(whole[head_end + 1:]):   # a byte every 20 s: never 30 s of silence
            g.loop.call_at(t0 + 20.0 * (i + 1), client_sends, conn, t, bytes([byte]))
        status, _, body = await g.response(t)
        assert status == 408 and json.loads(body) == {"error": "request body took too long"}
        assert 60.0 <= g.loop.time() - t0 <= 60.1 and len(g.host.work) == 1
        await g.stop()
    run(scenario)


def test_a_client_that_stops_reading_is_dropped_at_the_write_timeout_and_the_host_closed() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(write=60.0, read=600.0)))
        conn, t = g.connect()
        conn.data_received(request_bytes("POST", "/api/generate", GENERATE, LAPTOP))
        await settle()
        (sent,) = g.host.work
        sent.reply(STREAM_HEAD + chunk(b'{"response":"a"}\n'))
        await settle()
        assert t.written.startswith(b"HTTP/1.1 200 OK")
        conn.pause_writing()   # the client's socket buffer is full
        await settle()
        assert not sent.transport.reading   # backpressure: the host is no longer read
        t_stall = g.loop.time()
        await g.until_time(t_stall + 30.0)
        conn.resume_writing()   # it read some: no deadline until it stalls again
        assert sent.transport.reading
        sent.reply(chunk(b'{"response":"b"}\n'))
        await g.until_time(t_stall + 90.0)
        assert not t.is_closing()
        conn.pause_writing()
        t0 = g.loop.time()
        await g.until_time(t0 + 59.9)
        assert not t.is_closing() and not sent.transport.is_closing()
        await g.closed(conn)
        assert t.aborted and sent.transport.aborted   # dropped, and the generation stopped
        assert 60.0 <= g.loop.time() - t0 <= 60.1
        await settle()
        assert [(line["status"], line["outcome"]) for line in g.log.lines] == [(499, "client_gone")]
        await g.stop()
    run(scenario)


def test_a_refused_request_with_an_unread_body_lingers_two_seconds_then_closes() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434))
        conn, t = g.connect()
        conn.data_received(request_bytes("POST", "/api/generate", GENERATE))   # no key
        status, fields, _ = await g.response(t)
        t0 = g.loop.time()
        assert status == 401 and fields["Connection"] == "close" and not t.is_closing()
        conn.data_received(b"more of a body nobody reads")   # discarded while it lingers
        await g.until_time(t0 + 1.9)
        assert not t.is_closing()
        await g.closed(conn)
        await g.until_time(t0 + 2.0)
        assert t.aborted and t.written.count(b"HTTP/1.1") == 1 and not g.host.requests
        await g.stop()
    run(scenario)


def test_pipelined_requests_are_answered_in_order_each_authenticated() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434))
        g.host.answer = None
        conn, t = g.connect()
        conn.data_received(request_bytes("GET", "/api/version", headers=LAPTOP) + request_bytes("GET", "/health")
                           + request_bytes("GET", "/api/tags", headers=LAPTOP) + request_bytes("GET", "/api/tags"))
        await settle()
        assert [s.target for s in g.host.requests] == [b"/api/version"]   # one at a time
        g.host.requests[0].reply(response(200, b'{"version":"0.9"}'))
        assert (await g.response(t))[0] == 200
        assert (await g.response(t))[0] == 200   # /health, answered by the gate
        await settle()
        g.host.requests[1].reply(response(200, b'{"models":[]}'))
        assert (await g.response(t))[:3:2] == (200, b'{"models":[]}')
        assert (await g.response(t))[0] == 401
        assert [s.target for s in g.host.requests] == [b"/api/version", b"/api/tags"]
        assert len(g.host.connections) == 1   # one pooled connection served both
        await g.stop()
    run(scenario)


def test_a_request_with_the_key_in_a_split_head_is_served() -> None:
    """A head in many reads, inside its deadline, is one request (nothing decided on a part of it)."""
    async def scenario() -> None:
        g = Gate(make_config(11434, timeouts=Timeouts(header=10.0)))
        conn, t = g.connect()
        raw = request_bytes("GET", "/api/version", headers={"X-API-Key": KEY})
        for i in range(0, len(raw), 7):
            conn.data_received(raw[i:i + 7])
            await g.until_time(g.loop.time() + 0.1)
        await settle()
        g.host.requests[0].reply(response(200, b"{}"))
        assert (await g.response(t))[0] == 200
        await g.stop()
    run(scenario)


def test_a_stop_closes_idle_connections_at_once_and_cuts_a_running_stream_at_the_grace_period() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434))
        idle_conn, idle = g.connect()
        idle_conn.data_received(request_bytes("GET", "/health"))
        assert (await g.response(idle))[0] == 200
        conn, client = g.connect()
        conn.data_received(request_bytes("POST", "/api/generate", GENERATE, LAPTOP))
        await settle()
        (sent,) = g.host.work
        sent.reply(STREAM_HEAD + chunk(b'{"response":"a"}\n'))
        t0 = g.loop.time()
        stopping = asyncio.ensure_future(g.server.stop(grace=30.0))
        await settle()
        assert idle.is_closing() and not client.is_closing()   # waiting for a next request: closed at once
        await g.until_time(t0 + 29.9)
        sent.reply(chunk(b'{"response":"b"}\n'))   # the stream runs on meanwhile
        assert not client.is_closing() and bytes(client.written).endswith(chunk(b'{"response":"b"}\n'))
        await stopping
        assert 30.0 <= g.loop.time() - t0 <= 30.1 and client.aborted and sent.transport.is_closing()
        await g.stop()
    run(scenario)


def test_a_stop_waits_for_a_stream_that_ends_within_the_grace_period_and_no_longer() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434))
        conn, client = g.connect()
        conn.data_received(request_bytes("POST", "/api/generate", GENERATE, LAPTOP))
        await settle()
        (sent,) = g.host.work
        sent.reply(STREAM_HEAD + chunk(b'{"response":"a"}\n'))
        t0 = g.loop.time()
        stopping = asyncio.ensure_future(g.server.stop(grace=30.0))
        await g.until_time(t0 + 10.0)
        sent.reply(chunk(b'{"done":true}\n') + b"0\r\n\r\n")
        await stopping
        assert g.loop.time() - t0 == 10.0   # not the whole grace period
        assert bytes(client.written).endswith(b"0\r\n\r\n") and not client.aborted
        await g.stop()
    run(scenario)
