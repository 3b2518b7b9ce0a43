"""Routing over several Ollama hosts: literal snapshots, a fake clock, no sockets."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Sequence

import pytest

from guardproxy.decisions import routing
from guardproxy.decisions.listings import merge_ps, merge_tags, merge_v1_models, v1_models_from_tags
from guardproxy.decisions.routing import (Failure, Host, Hosts, Request, Verdict, canonical_model, choose,
                                          fail_over, model_of, trips_breaker)

NOW = 100.0


def entry(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": name, **extra}


def host(name: str, models: list[str] | None = None, loaded: Sequence[str] = (), in_flight: int = 0,
         max_concurrent: int = 4, weight: float = 1.0, patterns: tuple[str, ...] | None = None) -> Host:
    h = Host(name, max_concurrent=max_concurrent, weight=weight, patterns=patterns)
    if models is not None:
        h.set_tags([entry(m) for m in models])
    h.set_ps([entry(m) for m in loaded])
    h.in_flight = in_flight
    return h


def pick(hosts: list[Host] | Hosts, turn: int = 0, now: float = NOW, **req: Any) -> Host | Verdict:
    pool = hosts if isinstance(hosts, Hosts) else Hosts(hosts)
    return choose(pool, Request(**req), now, turn)


def name(choice: Host | Verdict) -> str:
    assert isinstance(choice, Host), choice
    return choice.name


# --- model names ---------------------------------------------------------------------

@pytest.mark.parametrize("given,canonical", [
    ("llama3.2", "llama3.2:latest"),
    ("Llama3.2:LATEST", "llama3.2:latest"),
    ("llama3.2:1b", "llama3.2:1b"),
    ("library/llama3.2", "llama3.2:latest"),
    ("registry.ollama.ai/library/llama3.2:3b", "llama3.2:3b"),
    (" registry.ollama.ai/jo/model ", "jo/model:latest"),
    ("hf.co/Org/Repo-GGUF:Q4_K_M", "hf.co/org/repo-gguf:q4_k_m"),
    ("localhost:5000/model", "localhost:5000/model:latest"),  # a port is not a tag
])
def test_canonical_model(given: str, canonical: str) -> None:
    assert canonical_model(given) == canonical
    assert Request(model=given).model == canonical


@pytest.mark.parametrize("body,or_name,model", [
    (b'{"model":"llama3.2","prompt":"hi"}', False, "llama3.2"),
    (b'{"name":"llama3.2"}', True, "llama3.2"),
    (b'{"name":"llama3.2"}', False, None),
    (b'{"model":""}', False, None),
    (b'{"model":7}', False, None),
    (b'["model"]', False, None),
    (b'{"model":', False, None),
    (b'[' * 100_000, False, None),
])
def test_the_quick_reading_of_a_bodys_model_for_routing(body: bytes, or_name: bool, model: str | None) -> None:
    assert model_of(body, or_name) == model


def test_a_long_name_is_canonical_but_not_cached() -> None:
    before = routing._canonical_short.cache_info().currsize
    assert canonical_model("M" * 600) == "m" * 600 + ":latest"
    assert routing._canonical_short.cache_info().currsize == before


def test_lists_uses_tags_narrowed_by_a_configured_glob_list() -> None:
    h = host("a", models=["llama3.2:latest", "llama3.2:1b", "qwen2.5:7b"], patterns=("llama3.2:*",))
    assert [e["name"] for e in h.tags] == ["llama3.2:latest", "llama3.2:1b"]
    assert h.lists("llama3.2:1b") and h.lists("llama3.2:latest")
    assert not h.lists("qwen2.5:7b")            # on the host, but not configured for it
    assert not h.lists("llama3.2:70b")          # configured, but not on the host


def test_before_its_first_tags_a_host_holds_what_it_is_configured_for() -> None:
    assert Host("a").lists("anything:latest")
    configured = Host("b", patterns=("llama3.2",))
    assert configured.lists("llama3.2:latest") and not configured.lists("qwen2.5:latest")


def test_a_loaded_model_is_a_listed_model_and_forget_drops_it() -> None:
    h = host("a", models=["llama3.2:latest"], loaded=["qwen2.5:7b"])
    assert h.lists("qwen2.5:7b") and h.loaded == {"qwen2.5:7b"}
    h.set_ps([entry("Mistral")])  # pulled and loaded since the last /api/tags
    assert h.lists("mistral:latest")
    h.forget("mistral:latest")
    assert not h.lists("mistral:latest") and "mistral:latest" not in h.loaded


# --- choose ----------------------------------------------------------------------------

def test_only_hosts_that_list_the_model() -> None:
    hosts = [host("a", models=["qwen2.5:7b"]), host("b", models=["llama3.2:latest"], in_flight=3)]
    for turn in range(4):
        assert name(pick(hosts, turn, model="llama3.2")) == "b"
        assert name(pick(hosts, turn, model="REGISTRY.ollama.ai/library/Llama3.2:latest")) == "b"
        assert name(pick(hosts, turn, model="qwen2.5:7b")) == "a"


def test_spare_and_loaded_beats_spare_and_cold_even_when_busier() -> None:
    hosts = [host("cold", models=["m:latest"], in_flight=0),
             host("warm", models=["m:latest"], loaded=["m:latest"], in_flight=3)]
    assert all(name(pick(hosts, t, model="m")) == "warm" for t in range(4))


def test_spare_and_cold_beats_warm_and_full() -> None:
    hosts = [host("warm-full", models=["m:latest"], loaded=["m:latest"], in_flight=4),
             host("cold", models=["m:latest"], in_flight=3)]
    assert all(name(pick(hosts, t, model="m")) == "cold" for t in range(4))


def test_a_generation_waits_when_every_suitable_host_is_at_max_concurrent_warm_or_not() -> None:
    hosts = [host("cold-full", models=["m:latest"], in_flight=4),
             host("warm-a", models=["m:latest"], loaded=["m:latest"], in_flight=4),
             host("warm-b", models=["m:latest"], loaded=["m:latest"], in_flight=4)]
    assert pick(hosts, model="m") is Verdict.WAIT
    hosts[0].in_flight = 3  # a cold host with room beats waiting for a warm one
    assert name(pick(hosts, model="m")) == "cold-full"


def test_without_a_slot_warm_and_full_is_the_third_choice_cold_and_full_the_fourth() -> None:
    hosts = [host("cold-full", models=["m:latest"], in_flight=4),
             host("warm-a", models=["m:latest"], loaded=["m:latest"], in_flight=6),
             host("warm-b", models=["m:latest"], loaded=["m:latest"], in_flight=5)]
    assert all(name(pick(hosts, t, model="m", generation=False)) == "warm-b" for t in range(4))
    for h in hosts[1:]:
        h.set_ps([])
    assert all(name(pick(hosts, t, model="m", generation=False)) == "cold-full" for t in range(4))


def test_every_suitable_host_full_and_cold_is_a_wait() -> None:
    hosts = [host("a", models=["m:latest"], loaded=["other:latest"], in_flight=4),
             host("b", models=["m:latest"], in_flight=2, max_concurrent=2),
             host("idle-without-it", models=["other:latest"])]
    assert pick(hosts, model="m") is Verdict.WAIT
    hosts[1].in_flight = 1  # one generation ended
    assert name(pick(hosts, model="m")) == "b"


def test_least_busy_is_in_flight_over_capacity_times_weight() -> None:
    hosts = [host("a", models=["m:latest"], in_flight=2, max_concurrent=4),              # 0.5
             host("b", models=["m:latest"], in_flight=3, max_concurrent=8),              # 0.375
             host("c", models=["m:latest"], in_flight=3, max_concurrent=4, weight=2.0)]  # 0.375
    assert {name(pick(hosts, t, model="m")) for t in range(6)} == {"b", "c"}
    hosts[2].in_flight = 2  # 0.25
    assert all(name(pick(hosts, t, model="m")) == "c" for t in range(6))


def test_ties_rotate_with_the_turn_counter() -> None:
    pool = Hosts([host(n, models=["m:latest"], loaded=["m:latest"], in_flight=1) for n in "abc"])
    assert [name(choose(pool, Request(model="m"), NOW, t)) for t in range(6)] == list("abcabc")
    assert [name(choose(pool, Request(), NOW, t)) for t in range(3)] == list("abc")
    # Same turn, same answer: no state hides in the module.
    assert name(choose(pool, Request(model="m"), NOW, 7)) == name(choose(pool, Request(model="m"), NOW, 7))


def test_no_host_lists_the_model_goes_to_one_available_host_for_its_own_404() -> None:
    down = host("down", models=["x:latest"])
    for _ in range(3):
        down.health_check(False)
    hosts = [down, host("busy", models=["y:latest"], in_flight=3), host("idle", models=["y:latest"])]
    assert name(pick(hosts, model="not-pulled")) == "idle"


def test_the_model_on_unavailable_hosts_only_is_unavailable_not_a_404() -> None:
    only = host("only", models=["m:latest"])
    only.failed(Failure.STATUS, 503, now=NOW, sent_at=NOW)
    assert pick([only, host("other", models=["x:latest"])], model="m") is Verdict.UNAVAILABLE


def test_a_request_without_a_model_goes_to_the_least_busy_available_host() -> None:
    hosts = [host("a", in_flight=2), host("b", in_flight=1), host("c", in_flight=0)]
    hosts[2].health_check(False, refused=True)
    assert all(name(pick(hosts, t)) == "b" for t in range(3))
    hosts[1].failed(Failure.RESET, now=NOW, sent_at=NOW)
    assert name(pick(hosts)) == "a"
    hosts[0].failed(Failure.CONNECT_TIMEOUT, now=NOW, sent_at=NOW)
    assert pick(hosts) is Verdict.UNAVAILABLE


def test_an_explicit_target_is_obeyed_even_when_the_host_is_out() -> None:
    a, b = host("gpu-a"), host("gpu-b", models=[], in_flight=9)
    for _ in range(3):
        b.health_check(False)
    assert name(pick([a, b], target="gpu-b", admin_route=True, model="llama3.2")) == "gpu-b"
    assert name(pick([a, b], target="gpu-b")) == "gpu-b"
    assert pick([a, b], target="gpu-c", admin_route=True) is Verdict.NO_SUCH_HOST
    assert pick([a, b], target="gpu-b", tried=frozenset({"gpu-b"})) is Verdict.UNAVAILABLE


def test_an_admin_route_without_a_target_takes_the_first_available_host() -> None:
    hosts = [host("first", in_flight=4), host("second"), host("third")]
    assert all(name(pick(hosts, t, admin_route=True, model="new-model")) == "first" for t in range(3))
    hosts[0].failed(Failure.STATUS, 500, now=NOW, sent_at=NOW)
    assert name(pick(hosts, admin_route=True)) == "second"
    assert name(pick(hosts, admin_route=True, tried=frozenset({"second"}))) == "third"


def test_a_host_whose_breaker_is_open_is_skipped_until_it_closes() -> None:
    hosts = [host("a", models=["m:latest"]), host("b", models=["m:latest"], in_flight=3)]
    assert hosts[0].failed(Failure.STATUS, 429, now=NOW, sent_at=NOW)
    assert name(pick(hosts, now=NOW, model="m")) == "b"
    assert name(pick(hosts, now=NOW + 0.999, model="m")) == "b"
    assert name(pick(hosts, now=NOW + 1.0, model="m")) == "a"


def test_failover_skips_hosts_already_tried() -> None:
    hosts = [host("a", models=["m:latest"], loaded=["m:latest"]), host("b", models=["m:latest"], in_flight=3),
             host("c", models=["other:latest"])]
    first = pick(hosts, model="m")
    assert name(first) == "a"
    req = Request(model="m").after(hosts[0])
    assert req.tried == {"a"} and req.model == "m:latest"
    second = choose(Hosts(hosts), req, NOW, 0)
    assert name(second) == "b"
    # Every host that lists it tried: nowhere left, not the 404 path.
    assert choose(Hosts(hosts), req.after(hosts[1]), NOW, 0) is Verdict.UNAVAILABLE


def test_hosts_with_unknown_lists_take_any_model_their_patterns_allow() -> None:
    hosts = [Host("unknown", max_concurrent=4), Host("configured", patterns=("qwen*",)),
             host("known", models=["qwen2.5:7b"])]
    hosts[0].in_flight = 1
    assert name(pick(hosts, model="qwen2.5:7b")) == "configured"
    assert name(pick(hosts, model="llama3.2")) == "unknown"


def test_no_hosts_at_all() -> None:
    assert pick([], model="m") is Verdict.UNAVAILABLE and pick([]) is Verdict.UNAVAILABLE


def test_host_names_are_unique_and_settings_sane() -> None:
    with pytest.raises(ValueError):
        Hosts([Host("a"), Host("a")])
    with pytest.raises(ValueError):
        Host("a", max_concurrent=0)
    with pytest.raises(ValueError):
        Host("a", weight=0)


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
                assert fail_over(Failure.STATUS, 503, attempts=attempts, listed=True)
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
    assert fail_over(failure, status, attempts=1, listed=listed) is retry
    assert fail_over(failure, status, attempts=2, listed=listed) is False           # default max_attempts 2
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


def test_merged_v1_models_name_each_model_once() -> None:
    a = [{"id": "llama3.2:latest", "object": "model"}]
    b = [{"id": "llama3.2", "object": "model"}, {"id": "qwen2.5:7b", "object": "model"}]
    assert [m["id"] for m in merge_v1_models([a, b])] == ["llama3.2:latest", "qwen2.5:7b"]


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


# --- purity ---------------------------------------------------------------------------

def test_the_module_imports_no_io() -> None:
    tree = ast.parse(Path(routing.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[0] in {"asyncio", "socket", "selectors", "engine"}
                or "engine" in m.split(".")}
