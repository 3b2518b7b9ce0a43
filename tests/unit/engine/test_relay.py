"""The relay driven with an in-memory transport, the way h11 drives Connection: bytes in, bytes out.

No sockets: `data_received` is called with the upstream's bytes cut at every
possible place, and what reaches the sink is compared byte for byte.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guardproxy.engine.failures import ClientGone, FirstByteTimeout, UpstreamGone, UpstreamTimeout
from guardproxy.engine.relay import UpstreamConnection
from guardproxy.engine.sinks import Collector
from guardproxy.wire.heads import BadUpstreamHead


class MemoryTransport(asyncio.Transport):
    """What the relay calls on its upstream transport, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.aborted = False
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes += 1


def connection() -> tuple[UpstreamConnection, MemoryTransport, list[UpstreamConnection]]:
    idle_closed: list[UpstreamConnection] = []
    up = UpstreamConnection(asyncio.get_running_loop(), idle_closed.append)
    transport = MemoryTransport()
    up.connection_made(transport)
    return up, transport, idle_closed


def begin(up: UpstreamConnection, sink: Any, **kw: Any) -> "asyncio.Future[bool]":
    args: dict[str, Any] = dict(head_request=False, keep_alive=True, read_timeout=60.0, first_byte_timeout=60.0)
    args.update(kw)
    return up.begin(sink, **args)


def chunk(line: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(line), line)


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
           + chunk(b'{"response":" Hello","done":false}\n') + chunk(b'{"response":" you","done":false}\n')
           + b"0\r\n\r\n")
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("response", [CHUNKED, LENGTH], ids=["chunked", "length"])
async def test_every_split_reaches_the_sink_byte_for_byte(response: bytes) -> None:
    for cut in range(1, len(response)):
        up, transport, _ = connection()
        sink = Sink()
        result = begin(up, sink)
        up.data_received(response[:cut])
        up.data_received(response[cut:])
        assert await result is True  # reusable: the response ended where its framing said
        assert bytes(sink.data) == response, cut
        assert up.bytes_out == len(response)
        assert not transport.aborted


async def test_each_read_is_written_at_once() -> None:
    up, _, _ = connection()
    sink = Sink()
    begin(up, sink)
    head, rest = CHUNKED.split(b"\r\n\r\n", 1)
    up.data_received(head + b"\r\n\r\n")
    writes = sink.writes
    up.data_received(rest[:10])
    assert sink.writes == writes + 1 and sink.data.endswith(rest[:10])  # no coalescing, no waiting


async def test_connection_close_in_the_response_is_not_reused() -> None:
    up, _, _ = connection()
    result = begin(up, Sink())
    up.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert await result is False


async def test_close_delimited_body_ends_with_the_connection() -> None:
    up, _, idle = connection()
    sink = Sink()
    result = begin(up, sink)
    up.data_received(b"HTTP/1.0 200 OK\r\n\r\nsome ")
    up.data_received(b"bytes")
    up.connection_lost(None)
    assert await result is False
    assert sink.data.endswith(b"some bytes")
    assert idle == []  # it was not idle: the exchange owned it


async def test_head_request_has_no_body() -> None:
    up, _, _ = connection()
    sink = Sink()
    result = begin(up, sink, head_request=True)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    # Not reusable: a host may still send a body for it, which the next request would read as its own.
    assert await result is False
    assert sink.data.endswith(b"\r\n\r\n")


async def test_interim_responses_are_not_forwarded() -> None:
    up, _, _ = connection()
    sink = Sink()
    result = begin(up, sink)
    up.data_received(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + LENGTH)
    assert await result is True
    assert bytes(sink.data) == LENGTH


async def test_extra_headers_and_connection_close_for_the_client() -> None:
    up, _, _ = connection()
    sink = Sink()
    result = begin(up, sink, keep_alive=False, extra_headers=b"Vary: Origin\r\n")
    up.data_received(LENGTH)
    await result
    assert bytes(sink.data) == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVary: Origin\r\nConnection: close\r\n\r\nhello"
    assert up.close_client


async def test_malformed_body_before_anything_was_sent_is_a_502() -> None:
    up, transport, _ = connection()
    sink = Sink()
    result = begin(up, sink)
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    with pytest.raises(BadUpstreamHead):
        await result
    assert sink.data == b"" and not up.head_sent and transport.aborted


async def test_malformed_body_after_the_head_cuts_the_stream() -> None:
    up, transport, _ = connection()
    sink = Sink()
    result = begin(up, sink)
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    up.data_received(b"zz\r\n")
    with pytest.raises(UpstreamGone):
        await result
    assert up.head_sent and transport.aborted


async def test_upstream_gone_mid_stream() -> None:
    up, _, _ = connection()
    result = begin(up, Sink())
    up.data_received(CHUNKED[:80])
    up.connection_lost(ConnectionResetError())
    with pytest.raises(UpstreamGone):
        await result


async def test_client_lost_aborts_the_upstream_at_once() -> None:
    up, transport, _ = connection()
    result = begin(up, Sink())
    up.data_received(CHUNKED[:80])
    up.client_lost()
    assert transport.aborted  # Ollama stops generating when its connection closes
    with pytest.raises(ClientGone):
        await result


async def test_client_backpressure_pauses_and_resumes_reading() -> None:
    up, transport, _ = connection()
    result = begin(up, Sink(), paused=True)  # the client was paused already
    assert not transport.reading
    up.resume_for_client()
    assert transport.reading
    up.pause_for_client()
    assert not transport.reading
    up.data_received(LENGTH)
    await result
    assert transport.reading  # detached: the pooled connection reads again


async def test_pause_for_client_is_ignored_when_no_exchange_is_attached() -> None:
    up, transport, _ = connection()
    up.pause_for_client()
    assert transport.reading


async def test_first_byte_timeout_then_read_timeout() -> None:
    up, _, _ = connection()
    result = begin(up, Sink(), first_byte_timeout=0.01, read_timeout=60.0)
    with pytest.raises(FirstByteTimeout):
        await asyncio.wait_for(result, 5)
    up, _, _ = connection()
    result = begin(up, Sink(), first_byte_timeout=60.0, read_timeout=0.01)
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(result, 5)


async def test_a_body_read_restarts_the_read_clock_at_the_sweep_that_sees_it() -> None:
    up, _, _ = connection()
    result = begin(up, Sink(), first_byte_timeout=60.0, read_timeout=10.0)
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    t0 = up.last_read  # the head's read
    up.check_timeout(t0 + 5)  # the sweep sees the head's bytes: the clock restarts here
    up.data_received(chunk(b'{"response":" Hi","done":false}\n'))
    up.check_timeout(t0 + 14)  # and here, for the token
    up.check_timeout(t0 + 23.9)
    assert not result.done()  # a read within the limit of every sweep that saw one
    up.check_timeout(t0 + 24)  # silent for the whole limit since
    with pytest.raises(UpstreamTimeout):
        await result


async def test_bytes_with_no_request_outstanding_abort() -> None:
    up, transport, idle = connection()
    up.data_received(b"HTTP/1.1 200 OK\r\n")
    assert transport.aborted
    up.connection_lost(None)
    assert idle == [up]  # the pool is told to forget it


@pytest.mark.parametrize("piece", [1, 7, 64, 10_000])
async def test_tail_keeps_the_end_of_a_generation_whatever_the_reads(piece: int) -> None:
    final = b'{"model":"llama3.2","done":true,"prompt_eval_count":26,"eval_count":290}\n'
    response = CHUNKED[:-5] + chunk(final) + b"0\r\n\r\n"
    up, _, _ = connection()
    result = begin(up, Sink(), tail=256)
    for cut in range(0, len(response), piece):
        up.data_received(response[cut:cut + piece])
    await result
    head, tail = up.tail()
    assert head == b"" and len(tail) <= 256 and response.endswith(tail)
    assert chunk(final) in tail  # the whole final line, however it was split
    assert up.tail() == (b"", b"")  # handed over once
    assert up._tail is None  # nothing kept past the hand-over


async def test_kept_reads_stay_few_for_token_streams() -> None:
    up, _, _ = connection()
    begin(up, Sink(), tail=256)
    up.data_received(CHUNKED.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    line = chunk(b'{"model":"llama3.2","response":" token","done":false}\n')
    for _ in range(1000):
        up.data_received(line)
    # At most four reads: the budget's worth joined, and the few reads since.
    assert up._tail is not None
    kept = up._tail.reads
    assert len(kept) <= 4 and sum(map(len, kept)) <= 256 + 3 * len(line)
    for _ in range(1000):
        up.data_received(b"x")  # an upstream writing byte by byte: joined, still bounded
    kept = up._tail.reads
    assert len(kept) <= 4 and sum(map(len, kept)) <= 256 + 3


async def test_head_keeps_the_start_for_anthropic_counts() -> None:
    up, _, _ = connection()
    result = begin(up, Sink(), tail=256, head=64)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 40)
    up.data_received(b"b" * 60)
    await result
    head, tail = up.tail()
    assert head == b"a" * 40 + b"b" * 24


async def test_collector_stops_a_response_past_its_limit() -> None:
    up, transport, _ = connection()
    sink = Collector(100, UpstreamGone("too large"))
    result = begin(up, sink)  # (which binds the collector to the exchange)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 200)
    with pytest.raises(UpstreamGone, match="too large"):
        await result
    assert transport.aborted


async def test_a_held_status_is_kept_from_the_sink_and_bounded() -> None:
    from guardproxy.engine.held import HELD_LIMIT
    up, _, _ = connection()
    sink = Sink()
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}"
    result = begin(up, sink, hold=frozenset({503}))
    up.data_received(answer)
    assert await result is True
    assert sink.data == b"" and not up.head_sent and up.status == 503  # another host may take it
    assert up.held is not None and bytes(up.held.data).endswith(b"\r\n\r\n{}") and up.held.response is not None
    up, transport, _ = connection()
    result = begin(up, sink, hold=frozenset({503}))
    up.data_received(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n" % (2 * HELD_LIMIT))
    up.data_received(b"x" * HELD_LIMIT)
    with pytest.raises(UpstreamGone, match="too large"):
        await result
    assert sink.data == b"" and transport.aborted
    up, _, _ = connection()
    result = begin(up, sink, hold=frozenset({503}))
    up.data_received(LENGTH)  # a status not held goes to the client as it comes
    assert await result is True and up.held is None and bytes(sink.data) == LENGTH


async def test_a_token_tail_only_for_generations() -> None:
    up, _, _ = connection()
    result = begin(up, Sink())
    up.data_received(CHUNKED)
    assert await result is True
    assert up._tail is None and up.tail() == (b"", b"")  # not a generation: nothing kept for counts
    result = begin(up, Sink(), tail=256)  # the same connection, reused for a generation
    assert up._tail is not None
    up.data_received(LENGTH)
    await result
    assert up.tail() == (b"", b"hello") and up._tail is None  # handed over, then gone
