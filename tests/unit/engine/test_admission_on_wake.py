"""One admission path.  A generation that waited is decided again, in full, at the moment it would
run: a ban imposed on its address meanwhile, or its key removed by a reload meanwhile, refuses it
instead of running it; it waits in one queue, for its key's slot and a host together.  The single
`upstream` is a set of one, always tried.  Driven on memory transports and a virtual clock
(support/virtual_gate.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable

import pytest

from conftest import make_config
from guardproxy.config.model import Ban, Config, KeyEntry, Routing, TrafficLimits, Upstream, UpstreamHost
from support.virtual import MemoryTransport, settle
from support.virtual_gate import GENERATE, LAPTOP, OWNER, PHONE, Gate, final_line, run


def _laptop_limited(**fields: object) -> tuple[KeyEntry, ...]:
    keys = list(make_config(1).keys)
    keys[0] = replace(keys[0], **fields)
    return tuple(keys)


def _waiting_for_slot() -> Config:
    """The laptop's one slot: its second generation waits for its key's slot (single `upstream`)."""
    return make_config(11434, keys=_laptop_limited(max_concurrent=1), ban=Ban(after_failures=2))


def _waiting_for_host() -> Config:
    """One host with one slot: a second generation waits for the host (no key limits at all)."""
    return make_config(11434, ban=Ban(after_failures=2),
                       upstreams=(UpstreamHost("a", Upstream("127.0.0.1", 11434), max_concurrent=1),))


def _idle(g: Gate) -> bool:
    """No slot, no host slot, no waiter left."""
    return (g.waiting() == 0 and g.server.policies.gate.total == 0
            and all(h.in_flight == 0 for h in g.server.hosts.hosts.order))


@pytest.mark.parametrize("config", [_waiting_for_slot, _waiting_for_host], ids=["key_slot", "host"])
def test_a_waiting_generation_whose_address_was_banned_meanwhile_is_refused_when_woken(
        config: Callable[[], Config]) -> None:
    async def scenario() -> None:
        g = Gate(config())
        first = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        second = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        assert g.waiting() == 1 and len(g.host.work) == 1
        for _ in range(2):   # the same address fails twice: banned
            status, _, _ = await g.response(g.send("POST", "/api/generate", GENERATE, {"X-API-Key": "wrong"}))
            assert status == 401
        g.host.work[0].reply(final_line(26, 20))
        assert (await g.response(first))[0] == 200
        status, fields, body = await g.response(second)
        assert status == 429 and json.loads(body)["error"] == "too many failed authentications; try again later"
        assert 0 < int(fields["Retry-After"]) <= 900
        assert len(g.host.work) == 1   # it never reached the host
        await settle()
        assert _idle(g)
        await g.stop()
    run(scenario)


@pytest.mark.parametrize("config", [_waiting_for_slot, _waiting_for_host], ids=["key_slot", "host"])
def test_a_waiting_generation_whose_key_a_reload_removed_is_refused_when_woken(config: Callable[[], Config]) -> None:
    async def scenario() -> None:
        cfg = config()
        g = Gate(cfg)
        holder = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        waiter = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        assert g.waiting() == 1 and len(g.host.work) == 1
        g.server.apply_config(replace(cfg, keys=tuple(k for k in cfg.keys if k.name != "laptop")))
        g.host.work[0].reply(final_line(26, 20))
        assert (await g.response(holder))[0] == 200   # a running request keeps going
        status, _, body = await g.response(waiter)
        assert status == 401 and json.loads(body) == {"error": "unauthorized"}
        assert len(g.host.work) == 1
        await settle()
        assert _idle(g)
        await g.stop()
    run(scenario)


def test_a_generation_waiting_for_its_key_slot_takes_the_host_its_slot_frees_before_a_later_key() -> None:
    """One queue: the key's slot and a host are granted together, at one moment, so a request that
    waited for its key's slot is not then sent to wait again, behind a later key, for a host."""
    async def scenario() -> None:
        g = Gate(make_config(11434, keys=_laptop_limited(max_concurrent=1), limits=TrafficLimits(queue_timeout=30.0),
                             upstreams=(UpstreamHost("a", Upstream("127.0.0.1", 11434), max_concurrent=1),
                                        UpstreamHost("b", Upstream("127.0.0.1", 11435), max_concurrent=1))))

        def generate(prompt: str, who: dict[str, str]) -> MemoryTransport:
            return g.send("POST", "/api/generate", json.dumps({"model": "llama3.2", "prompt": prompt}).encode(), who)

        def running() -> list[str]:
            return sorted(s.json()["prompt"] for h in g.hosts.values() for s in h.work if not s.answered)

        def answer(prompt: str) -> None:
            next(s for h in g.hosts.values() for s in h.work
                 if not s.answered and s.json()["prompt"] == prompt).reply(final_line(26, 20))
        laptop_1 = generate("laptop-1", LAPTOP)      # the laptop's slot, one host
        phone_1 = generate("phone-1", PHONE)         # the other host
        await settle()
        laptop_2 = generate("laptop-2", LAPTOP)      # waits: its key's slot
        await settle()
        phone_2 = generate("phone-2", PHONE)         # waits: a host
        await settle()
        assert g.waiting() == 2 and running() == ["laptop-1", "phone-1"]
        answer("laptop-1")   # its key's slot and its host free at one moment: both to the laptop's second
        assert (await g.response(laptop_1))[0] == 200
        await settle()
        assert running() == ["laptop-2", "phone-1"] and g.waiting() == 1
        answer("phone-1")
        await settle()
        assert running() == ["laptop-2", "phone-2"]
        answer("laptop-2")
        answer("phone-2")
        for client in (phone_1, laptop_2, phone_2):
            assert (await g.response(client))[0] == 200
        await settle()
        assert _idle(g)
        await g.stop()
    run(scenario)


def test_the_single_upstream_is_always_tried_a_refused_connect_is_a_502_never_a_503() -> None:
    """The single `upstream` is a host set of one, placed by the same code as several: down, or
    behind its breaker, it is still tried (as nginx's lone server), and a host named otherwise is 400."""
    async def scenario() -> None:
        g = Gate(make_config(11434, routing=Routing(health_interval=5.0)))
        (member,) = g.server.hosts.members.values()
        g.host.refuse = True
        for _ in range(3):
            for method, target, body in (("GET", "/api/version", None), ("POST", "/api/generate", GENERATE)):
                status, _, reply = await g.response(g.send(method, target, body, LAPTOP))
                assert status == 502 and json.loads(reply) == {"error": "upstream unavailable"}
        assert not member.host.up and not member.host.available(g.loop.time())   # down, and tried all the same
        status, _, _ = await g.response(g.send("GET", "/api/version", None, {**OWNER, "X-Guardproxy-Upstream": "gpu-b"}))
        assert status == 400
        await g.stop()
    run(scenario)
