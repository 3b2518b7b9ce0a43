"""Routing over several Ollama hosts, what changes a host's state: health checks, the breaker, failover, merged listings."""

from __future__ import annotations

import pytest

from guardproxy.decisions.listings import merge_ps, merge_tags, v1_models_from_tags
from guardproxy.decisions.routing import (Failure, Host, Hosts, Request, Verdict, choose,
                                          fail_over, trips_breaker)
from support.routing_hosts import NOW, entry, host, pick


# --- health ---------------------------------------------------------------------------

def test_a_host_starts_up_and_goes_down_after_three_failed_checks_in_a_row() -> None:
    h = Host("a")
    assert h.up
    assert [h.health_check(False) for _ in range(2)] == [False, False] and h.up
    assert h.health_check(True) is False                       # the run is broken
    assert [h.health_check(False) for _ in range(3)] == [False, False, True]
    assert not h.up and Hosts([h]).up_count() == 0


def test_a_refused_connection_takes_a_host_down_at_once() -> None:
    h = Host("a")
    assert h.health_check(False, refused=True) is True and not h.up
    assert h.health_check(False, refused=True) is False
    r = Host("b")
    r.failed(Failure.REFUSED, now=NOW, sent_at=NOW)            # refused on a request, not a check
    assert not r.up and r.open_until == NOW + 1.0


def test_up_again_after_two_good_checks_in_a_row() -> None:
    h = Host("a")
    h.health_check(False, refused=True)
    assert h.health_check(True) is False
    assert h.health_check(False) is False                      # the run is broken
    assert [h.health_check(True), h.health_check(True)] == [False, True] and h.up
    assert Hosts([h, Host("b")]).up_count() == 2


# --- the breaker ----------------------------------------------------------------------

def test_the_back_off_doubles_to_sixty_seconds_and_a_success_resets_it() -> None:
    h = Host("a")
    now, outs = NOW, []
    for _ in range(9):
        assert h.failed(Failure.STATUS, 503, now=now, sent_at=now)
        outs.append(h.open_until - now)
        assert not h.available(now) and not h.available(h.open_until - 0.001) and h.available(h.open_until)
        now = h.open_until
    assert outs == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    h.succeeded(sent_at=now)
    assert h.available(now) and h.backoff == 0
    h.failed(Failure.RESET, now=now, sent_at=now)
    assert h.open_until == now + 1.0


def test_the_breaker_stays_open_while_health_checks_pass() -> None:
    h = host("a", models=["m:latest"])
    h.failed(Failure.STATUS, 500, now=NOW, sent_at=NOW)
    for _ in range(5):
        h.health_check(True)
    assert h.up and not h.available(NOW + 0.5)
    assert pick([h], now=NOW + 0.5, model="m") is Verdict.UNAVAILABLE


def test_a_burst_of_failures_sent_before_the_trip_counts_once() -> None:
    h = Host("a")
    assert h.failed(Failure.STATUS, 503, now=NOW, sent_at=NOW - 0.2)
    for late in (NOW + 0.1, NOW + 5.0):  # in the window, and after it: same episode
        assert not h.failed(Failure.STATUS, 503, now=late, sent_at=NOW - 0.1)
    assert h.open_until == NOW + 1.0
    assert h.failed(Failure.STATUS, 503, now=NOW + 6.0, sent_at=NOW + 5.5)
    assert h.open_until == NOW + 8.0


def test_only_a_success_sent_after_the_trip_closes_the_breaker() -> None:
    h = Host("a")
    h.failed(Failure.STATUS, 429, now=NOW, sent_at=NOW)
    h.succeeded(sent_at=NOW - 1.0)  # queued before the host got busy
    assert not h.available(NOW + 0.5) and h.backoff == 1.0
    h.succeeded(sent_at=NOW + 1.5)
    assert h.backoff == 0 and h.available(NOW + 1.6)


@pytest.mark.parametrize("failure,status,trips", [
    (Failure.REFUSED, 0, True), (Failure.RESET, 0, True), (Failure.CONNECT_TIMEOUT, 0, True),
    (Failure.STATUS, 503, True), (Failure.STATUS, 429, True), (Failure.STATUS, 500, True),
    (Failure.STATUS, 404, False), (Failure.STATUS, 400, False), (Failure.STATUS, 502, False),
    (Failure.FIRST_BYTE_TIMEOUT, 0, False), (Failure.STARTED, 0, False),
])
def test_what_trips_the_breaker(failure: Failure, status: int, trips: bool) -> None:
    assert trips_breaker(failure, status) is trips
    h = Host("a")
    assert h.failed(failure, status, now=NOW, sent_at=NOW) is trips
    assert h.available(NOW) is not trips


def test_olla_144_a_host_that_fails_fast_does_not_win_least_busy() -> None:
    """Two hosts, one answering 503 at once; 200 requests over 20 s of fake time, one every 0.1 s.

    Without the breaker the failing host, never busy, would take every first
    attempt.  With it, it gets one probe each time its back-off ends.
    """
    bad = host("fails-fast", models=["m:latest"], loaded=["m:latest"])
    good = host("slow", models=["m:latest"], loaded=["m:latest"], in_flight=2)
    pool = Hosts([bad, good])
    first_tries = {"fails-fast": 0, "slow": 0}
    served = 0
    for i in range(200):
        now = NOW + i * 0.1
        req = Request(model="m")
        attempts = 0
        while True:
            h = choose(pool, req, now, i)
            assert isinstance(h, Host)
            attempts += 1
            if attempts == 1:
                first_tries[h.name] += 1
            if h is bad:
                h.failed(Failure.STATUS, 503, now=now, sent_at=now)
                assert fail_over(Failure.STATUS, 503, attempts=attempts, max_attempts=2, listed=True)
                req = req.after(h)
                continue
            h.succeeded(sent_at=now)
            served += 1
            break
    assert served == 200
    # Probes at 0, 1, 3, 7, 15 s (back-off 1, 2, 4, 8): five first attempts, not a hundred.
    assert first_tries == {"fails-fast": 5, "slow": 195}


# --- failover -------------------------------------------------------------------------

@pytest.mark.parametrize("failure,status,listed,retry", [
    (Failure.REFUSED, 0, False, True),
    (Failure.RESET, 0, False, True),
    (Failure.CONNECT_TIMEOUT, 0, False, True),
    (Failure.STATUS, 503, False, True),
    (Failure.STATUS, 429, False, True),
    (Failure.STATUS, 404, True, True),     # the host's list said it had the model: stale
    (Failure.STATUS, 404, False, False),   # sent there for its own 404
    (Failure.STATUS, 500, False, False),
    (Failure.STATUS, 502, False, False),
    (Failure.FIRST_BYTE_TIMEOUT, 0, True, False),
    (Failure.STARTED, 0, True, False),
])
def test_failover_before_the_first_byte(failure: Failure, status: int, listed: bool, retry: bool) -> None:
    assert fail_over(failure, status, attempts=1, max_attempts=2, listed=listed) is retry
    assert fail_over(failure, status, attempts=2, max_attempts=2, listed=listed) is False
    assert fail_over(failure, status, attempts=2, max_attempts=3, listed=listed) is retry


# --- listings -------------------------------------------------------------------------

def test_merged_tags_name_each_model_once() -> None:
    a = [entry("llama3.2:latest", size=1), entry("qwen2.5:7b")]
    b = [entry("Llama3.2", size=2), entry("mistral:latest")]
    merged = merge_tags([a, b])
    assert [(e["name"], e.get("size")) for e in merged] == [
        ("llama3.2:latest", 1), ("qwen2.5:7b", None), ("mistral:latest", None)]
    merged[0]["size"] = 99
    assert a[0]["size"] == 1  # copies: the snapshot is never changed by an answer built from it


def test_merged_ps_names_each_entrys_host() -> None:
    merged = merge_ps([("gpu-a", [entry("llama3.2:latest")]),
                       ("gpu-b", [entry("llama3.2:latest"), entry("qwen2.5:7b")])])
    assert [(e["name"], e["upstream"]) for e in merged] == [
        ("llama3.2:latest", "gpu-a"), ("llama3.2:latest", "gpu-b"), ("qwen2.5:7b", "gpu-b")]


def test_merged_tags_read_the_model_when_an_entry_has_no_name() -> None:
    a = [{"model": "llama3.2:latest"}]
    b = [{"model": "llama3.2"}, {"model": "qwen2.5:7b"}]
    assert [m["model"] for m in merge_tags([a, b])] == ["llama3.2:latest", "qwen2.5:7b"]


def test_v1_models_from_the_tags_snapshot() -> None:
    tags = [entry("llama3.2:latest", modified_at="2025-05-01T10:00:00.123456789-07:00"),
            entry("jo/tiny:1b", modified_at="2025-05-01T10:00:00Z"),
            entry("hf.co/org/repo:q4"), ]
    assert v1_models_from_tags(tags) == [
        {"id": "llama3.2:latest", "object": "model", "created": 1746118800, "owned_by": "library"},
        {"id": "jo/tiny:1b", "object": "model", "created": 1746093600, "owned_by": "jo"},
        {"id": "hf.co/org/repo:q4", "object": "model", "created": 0, "owned_by": "org"},
    ]


def test_a_hosts_listing_snapshot_keeps_only_its_configured_models() -> None:
    h = host("a", models=["llama3.2:latest", "qwen2.5:7b"], loaded=["qwen2.5:7b", "llama3.2:latest"],
             patterns=("llama*",))
    assert [e["name"] for e in h.tags] == ["llama3.2:latest"]
    assert [e["name"] for e in h.ps] == ["llama3.2:latest"]


def test_a_list_taken_again_says_whether_the_snapshot_changed() -> None:
    h = Host("a")
    assert h.set_tags([entry("llama3.2"), entry("qwen3:8b")]) is True
    assert h.set_tags([entry("llama3.2"), entry("qwen3:8b")]) is False
    assert h.set_tags([entry("llama3.2")]) is True
    assert h.set_ps([entry("llama3.2")]) is True and h.set_ps([entry("llama3.2")]) is False
    assert h.set_ps([entry("mistral")]) is True and h.models == {"llama3.2:latest", "mistral:latest"}
    h.forget("llama3.2:latest")   # a 404: the same list taken again brings it back
    assert h.set_tags([entry("llama3.2")]) is True and "llama3.2:latest" in h.models

