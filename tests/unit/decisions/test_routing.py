"""Routing over several Ollama hosts: literal snapshots, a fake clock, no sockets."""

from __future__ import annotations


import pytest

from guardproxy.decisions import routing
from guardproxy.decisions.routing import (Failure, Host, Hosts, Request, Verdict, canonical_model, choose,
                                          model_of)
from support.routing_hosts import NOW, entry, host, pick, name


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


def test_a_lone_host_is_never_unavailable_and_waits_only_at_its_cap() -> None:
    """The single `upstream` is a set of one: down or behind its breaker, it is still tried (nginx)."""
    a = Host("a", max_concurrent=2)
    hosts = Hosts([a], lone=True)
    a.health_check(False, refused=True)
    a.failed(Failure.REFUSED, now=NOW, sent_at=NOW)
    assert not a.available(NOW)
    assert choose(hosts, Request(model="m"), NOW, 0) is a
    assert choose(hosts, Request(model=None, admin_route=True), NOW, 0) is a
    assert choose(hosts, Request(target="b"), NOW, 0) is Verdict.NO_SUCH_HOST
    assert choose(hosts, Request(model="m").after(a), NOW, 0) is Verdict.UNAVAILABLE
    a.in_flight = 2
    assert choose(hosts, Request(model="m"), NOW, 0) is Verdict.WAIT
    assert choose(hosts, Request(model="m", generation=False), NOW, 0) is a
    assert choose(Hosts([a]), Request(model="m", generation=False), NOW, 0) is Verdict.UNAVAILABLE
