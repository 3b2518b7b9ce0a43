"""Generations waiting for a host with room: fair across keys, placed by `choose`, no sockets."""

from __future__ import annotations

from typing import Callable, TypeVar

import pytest

from guardproxy.decisions.hostqueue import TooManyWaiting, Waiting
from guardproxy.decisions.routing import Host, Hosts, Request, Verdict, choose

NOW = 100.0
W = TypeVar("W")


def full_host(name: str, models: list[str], max_concurrent: int = 1) -> Host:
    h = Host(name, max_concurrent=max_concurrent)
    h.set_tags([{"name": m} for m in models])
    h.in_flight = max_concurrent
    return h


def placer(hosts: Hosts) -> Callable[[Request], Host | Verdict]:
    return lambda req: choose(hosts, req, NOW, 0)


def room(hosts: Hosts) -> Callable[[], bool]:
    return lambda: any(h.in_flight < h.max_concurrent and h.available(NOW) for h in hosts.order)


def grant(q: Waiting[W], hosts: Hosts) -> list[tuple[W, Host]]:
    return q.grant(placer(hosts), room(hosts))


def test_a_freed_slot_goes_round_robin_across_keys() -> None:
    a = full_host("a", ["m:latest"])
    hosts = Hosts([a])
    q: Waiting[str] = Waiting()
    for w in ("k1-1", "k1-2", "k1-3"):
        q.enqueue("k1", Request(model="m"), w)
    q.enqueue("k2", Request(model="m"), "k2-1")
    assert grant(q, hosts) == []  # still full
    granted = []
    for _ in range(4):
        a.in_flight -= 1
        (waiter, host), = grant(q, hosts)
        assert host is a and a.in_flight == 1
        granted.append(waiter)
    assert granted == ["k1-1", "k2-1", "k1-2", "k1-3"]
    assert q.queued == 0


def test_a_waiter_for_a_model_on_full_hosts_does_not_hold_up_one_the_freed_host_can_take() -> None:
    a, b = full_host("a", ["m:latest"]), full_host("b", ["other:latest"])
    hosts = Hosts([a, b])
    q: Waiting[str] = Waiting()
    q.enqueue("k", Request(model="m"), "wants-m")
    q.enqueue("k", Request(model="other"), "wants-other")
    b.in_flight = 0
    assert [(w, h.name) for w, h in grant(q, hosts)] == [("wants-other", "b")]
    a.in_flight = 0
    assert [(w, h.name) for w, h in grant(q, hosts)] == [("wants-m", "a")]


def test_one_grant_fills_every_freed_slot_and_no_more() -> None:
    a = full_host("a", ["m:latest"], max_concurrent=3)
    hosts = Hosts([a])
    q: Waiting[int] = Waiting()
    for i in range(5):
        q.enqueue(f"k{i}", Request(model="m"), i)
    a.in_flight = 1
    assert [w for w, _ in grant(q, hosts)] == [0, 1]
    assert a.in_flight == 3 and q.queued == 3


def test_a_pass_stops_once_no_host_has_room() -> None:
    a = full_host("a", ["m:latest"])
    hosts = Hosts([a])
    q: Waiting[int] = Waiting()
    for i in range(100):
        q.enqueue(f"k{i}", Request(model="m"), i)
    places: list[Request] = []

    def place(req: Request) -> Host | Verdict:
        places.append(req)
        return choose(hosts, req, NOW, 0)
    assert q.grant(place, room(hosts)) == [] and places == []   # all full: nobody is placed
    a.in_flight = 0
    assert [w for w, _ in q.grant(place, room(hosts))] == [0]
    assert len(places) == 1 and q.queued == 99   # and the 99 behind it were not placed on a full host


def test_a_waiter_whose_model_no_host_lists_any_more_waits_for_a_free_slot() -> None:
    # It waited for a full host; that host's list has since lost the model.  Routing would put it
    # on the least busy host, full or not (for that host's own 404); from the queue it takes a free slot.
    a, b = full_host("a", ["m:latest"]), full_host("b", ["other:latest"])
    hosts = Hosts([a, b])
    q: Waiting[str] = Waiting()
    q.enqueue("k", Request(model="m"), "w")
    a.forget("m:latest")
    assert isinstance(choose(hosts, Request(model="m"), NOW, 0), Host)
    assert grant(q, hosts) == [] and q.queued == 1
    b.in_flight = 0
    assert [(w, h.name) for w, h in grant(q, hosts)] == [("w", "b")]
    assert b.in_flight == 1 and q.queued == 0


def test_cancel_and_the_queue_cap() -> None:
    q: Waiting[str] = Waiting(max_queue=2)
    q.enqueue("k", Request(model="m"), "x")
    q.enqueue("j", Request(model="m"), "y")
    with pytest.raises(TooManyWaiting):
        q.enqueue("k", Request(model="m"), "z")
    assert q.cancel("k", "x") and not q.cancel("k", "x") and q.queued == 1
    assert not q.cancel("nobody", "y")


def test_an_unavailable_host_is_not_granted() -> None:
    a = full_host("a", ["m:latest"])
    hosts = Hosts([a])
    q: Waiting[str] = Waiting()
    q.enqueue("k", Request(model="m"), "w")
    a.in_flight = 0
    a.health_check(False, refused=True)
    assert choose(hosts, Request(model="m"), NOW, 0) is Verdict.UNAVAILABLE
    assert grant(q, hosts) == [] and q.queued == 1


def test_configure_keeps_counters_and_a_new_glob_list_forgets_the_model_list() -> None:
    h = Host("a", max_concurrent=2, patterns=("llama*",))
    h.set_tags([{"name": "llama3.2"}, {"name": "qwen2.5"}])
    h.in_flight = 2
    assert not h.configure(4, 2.0, ("llama*",))
    assert h.capacity == 8 and h.in_flight == 2 and h.models == {"llama3.2:latest"}
    assert h.configure(4, 2.0, None)
    assert h.models is None and h.lists("qwen2.5:latest")
    with pytest.raises(ValueError):
        h.configure(0, 1.0, None)
