"""The upstream connection's state table and its head reader (engine/response.py), on their own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guardproxy.engine.relay import UpstreamConnection
from guardproxy.engine.response import (BEGIN, BODY, END, FINAL_HEAD, HEAD, IDLE, MAX_INTERIM, MAX_RESPONSE_HEAD,
                                        TRANSITIONS, HeadReader, IllegalTransition, next_state)
from guardproxy.wire.framing import ChunkedFraming, CloseFraming, LengthFraming, NoBody
from guardproxy.wire.heads import BadUpstreamHead

HEAD_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


# --- the state table ----------------------------------------------------------------

def test_the_legal_moves_are_exactly_those_of_one_exchange() -> None:
    moves = {(state, event, to) for state, events in TRANSITIONS.items() for event, to in events.items()}
    assert moves == {(IDLE, BEGIN, HEAD), (HEAD, FINAL_HEAD, BODY), (HEAD, END, IDLE), (BODY, END, IDLE)}


@pytest.mark.parametrize("state,event", [(IDLE, FINAL_HEAD), (IDLE, END), (HEAD, BEGIN), (BODY, BEGIN),
                                         (BODY, FINAL_HEAD)])
def test_every_other_move_is_refused(state: int, event: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        next_state(state, event)
    assert info.value.state == state and info.value.event == event and event in str(info.value)


async def test_a_second_begin_on_a_busy_connection_is_refused_and_changes_nothing() -> None:
    up = UpstreamConnection(asyncio.get_running_loop(), lambda c: None)
    sink = Collector()
    first = up.begin(sink, head_request=False, keep_alive=True, read_timeout=60.0)
    with pytest.raises(IllegalTransition, match="'begin' in state HEAD"):
        up.begin(Collector(), head_request=False, keep_alive=True, read_timeout=60.0)
    assert up.state == HEAD and up.result is first and up._sink is sink  # the first exchange still owns it
    up.fail(RuntimeError("done"))
    assert up.state == IDLE and first.done()
    first.exception()
    up.fail(RuntimeError("late"))  # a late error with no exchange attached is nothing to end
    assert up.state == IDLE


class Collector:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


# --- the head reader ----------------------------------------------------------------

def reader(**kw: Any) -> HeadReader:
    args: dict[str, Any] = dict(head_request=False, client_keep_alive=True, extra=b"", hold=frozenset())
    args.update(kw)
    r = HeadReader()
    r.start(**args)
    return r


@pytest.mark.parametrize("interim", [b"", b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
                                     b"HTTP/1.1 102 Processing\r\n\r\n" * 3])
def test_a_head_split_anywhere_is_read_whole_with_its_body_bytes(interim: bytes) -> None:
    response = interim + HEAD_200 + b"hello"
    for cut in range(1, len(response)):
        r = reader()
        first = r.feed(response[:cut])
        if first is not None:  # the final head was whole in the first read
            rh, _, rest = first
            assert cut >= len(interim + HEAD_200) and bytes(rest) == response[len(interim + HEAD_200):cut]
            continue
        got = r.feed(response[cut:])
        assert got is not None, cut
        rh, _, rest = got
        assert rh.status == 200 and rh.content_length == 5
        assert bytes(rest) == b"hello"[max(0, cut - len(interim + HEAD_200)):]


def test_interim_heads_past_the_limit_are_refused() -> None:
    r = reader()
    for _ in range(MAX_INTERIM):
        assert r.feed(b"HTTP/1.1 103 Early Hints\r\n\r\n") is None
    with pytest.raises(BadUpstreamHead, match="too many interim"):
        r.feed(b"HTTP/1.1 103 Early Hints\r\n\r\n")


def test_102s_come_again_across_reads_but_not_past_the_limit_in_one() -> None:
    r = reader()
    for _ in range(3 * MAX_INTERIM):
        assert r.feed(b"HTTP/1.1 102 Processing\r\n\r\n") is None  # a host still at work
    with pytest.raises(BadUpstreamHead):
        reader().feed(b"HTTP/1.1 102 Processing\r\n\r\n" * (MAX_INTERIM + 1))


def test_switching_protocols_and_oversized_heads_are_refused() -> None:
    with pytest.raises(BadUpstreamHead, match="switched"):
        reader().feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
    r = reader()
    big = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * MAX_RESPONSE_HEAD
    assert r.feed(big[:MAX_RESPONSE_HEAD]) is None  # at the limit: still waiting
    with pytest.raises(BadUpstreamHead, match="too large"):
        r.feed(big[MAX_RESPONSE_HEAD:])


def test_the_client_copy_gets_the_extra_headers_and_its_close() -> None:
    got = reader(client_keep_alive=False, extra=b"Vary: Origin\r\n").feed(HEAD_200)
    assert got is not None
    rh, _, rest = got
    assert rh.head.endswith(b"Vary: Origin\r\nConnection: close\r\n\r\n") and rh.close_client and rest == b""


def test_a_large_first_read_is_viewed_unless_chunked() -> None:
    body = b"x" * 70_000
    got = reader().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + body)
    assert got is not None and type(got[2]) is memoryview and got[2] == body  # not copied
    got = reader().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert got is not None and type(got[2]) is bytes  # the chunked framing searches its input


def test_framing_follows_the_head() -> None:
    def framing(head: bytes, **kw: Any) -> type:
        got = reader(**kw).feed(head)
        assert got is not None
        return type(got[1])
    assert framing(HEAD_200) is LengthFraming
    assert framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") is ChunkedFraming
    assert framing(b"HTTP/1.0 200 OK\r\n\r\n") is CloseFraming
    assert framing(b"HTTP/1.1 204 No Content\r\n\r\n") is NoBody
    assert framing(HEAD_200, head_request=True) is NoBody
