"""The deadlines of an upstream exchange (engine/deadlines.py) on a clock that is a plain number."""

from __future__ import annotations

from guardproxy.engine.deadlines import Deadlines
from guardproxy.engine.failures import ClientGone, FirstByteTimeout, UpstreamTimeout


def started(first_byte: float = 300.0, read: float = 60.0, client_write: float | None = None) -> Deadlines:
    d = Deadlines()
    d.start_clock(1000.0, first_byte, read, client_write)
    return d


def test_the_first_byte_limit_runs_from_the_start_until_the_head() -> None:
    d = started(first_byte=300.0, read=60.0)
    assert d.overdue(1299.9, False, 0, False) is None  # the read timeout does not apply before the head
    assert d.overdue(1300.0, False, 0, False) is FirstByteTimeout


def test_after_the_head_the_limit_is_the_gap_between_reads() -> None:
    d = started(first_byte=300.0, read=60.0)
    d.last_read = 1010.0  # the head arrived
    assert d.overdue(1069.9, True, 0, False) is None
    assert d.overdue(1070.0, True, 0, False) is UpstreamTimeout


def test_a_sweep_that_sees_bytes_move_counts_as_a_read() -> None:
    d = started(read=60.0)
    d.last_read = 1000.0
    assert d.overdue(1050.0, True, 120, False) is None  # bytes moved since the last sweep: a read at 1050
    assert d.overdue(1109.9, True, 120, False) is None
    assert d.overdue(1110.0, True, 120, False) is UpstreamTimeout  # none since
    d = started(read=60.0)
    assert d.overdue(1030.0, False, 500, False) is None
    assert d.overdue(1300.0, False, 500, False) is FirstByteTimeout  # before the head bytes are no read


def test_a_paused_client_restarts_the_clock() -> None:
    d = started(first_byte=300.0, read=60.0)
    d.last_read = 1000.0
    assert d.overdue(5000.0, True, 0, True) is None  # the client's stall is not the upstream's fault
    assert d.overdue(5059.9, True, 0, False) is None  # counted from the last sweep that saw it paused
    assert d.overdue(5060.0, True, 0, False) is UpstreamTimeout


def test_a_blocked_splice_is_judged_by_the_client_write_deadline() -> None:
    d = started(read=60.0, client_write=30.0)
    d.last_read = 1000.0
    assert d.overdue(1500.0, True, 0, False, blocked_since=1480.0) is None  # blocked 20 s: in time
    assert d.overdue(1559.9, True, 0, False) is None  # unblocked: the read clock restarted at the last sweep
    assert d.overdue(1560.0, True, 0, False) is UpstreamTimeout
    d = started(read=60.0, client_write=30.0)
    assert d.overdue(1510.0, True, 0, False, blocked_since=1480.0) is None  # (exactly the limit: in time)
    assert d.overdue(1510.1, True, 0, False, blocked_since=1480.0) is ClientGone


def test_no_client_write_deadline_never_drops_a_blocked_client() -> None:
    d = started(read=60.0, client_write=None)
    assert d.overdue(10_000.0, True, 0, False, blocked_since=1000.0) is None


def test_each_exchange_starts_afresh() -> None:
    d = started(read=60.0)
    d.overdue(1010.0, True, 999, False)
    d.start_clock(2000.0, 5.0, 10.0, None)
    assert d.overdue(2004.9, False, 0, False) is None and d.overdue(2005.0, False, 0, False) is FirstByteTimeout
    assert d.seen_out == 0
