"""One admission path.  A generation that waited is decided again, in full, at the moment it would
run: a ban imposed on its address meanwhile, or its key removed by a reload meanwhile, refuses it
instead of running it; it waits in one queue, for its key's slot and a host together.  The single
`upstream` is a set of one, always tried.  Driven on memory transports and a virtual clock
(support/virtual.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import OTHER_KEY, make_config
from guardproxy.config.model import Ban, Config, KeyEntry, Routing, TrafficLimits, Upstream, UpstreamHost
from guardproxy.engine.failures import ConnectRefused
from support.virtual import MemoryTransport, settle
from test_engine_virtual_time import GENERATE, LAPTOP, OWNER, Engine, final_line, run

PHONE = {"X-API-Key": OTHER_KEY}


def _laptop_limited(**fields: object) -> tuple[KeyEntry, ...]:
    keys = list(make_config(1).keys)
    keys[0] = replace(keys[0], **fields)
    return tuple(keys)


def _waiting(e: Engine) -> int:
    """Generations waiting for a slot or a host, as the metrics count them."""
    return e.server.state.waiting() + e.server.hosts.waiting.queued


def _waiting_for_slot() -> Config:
    """The laptop's one slot: its second generation waits for its key's slot (single `upstream`)."""
    return make_config(11434, keys=_laptop_limited(max_concurrent=1), ban=Ban(after_failures=2))


def _waiting_for_host() -> Config:
    """One host with one slot: a second generation waits for the host (no key limits at all)."""
    return make_config(11434, ban=Ban(after_failures=2),
                       upstreams=(UpstreamHost("a", Upstream("127.0.0.1", 11434), max_concurrent=1),))


@pytest.mark.parametrize("config", [_waiting_for_slot, _waiting_for_host], ids=["key_slot", "host"])
def test_a_waiting_generation_whose_address_was_banned_meanwhile_is_refused_when_woken(config: object) -> None:
    async def scenario() -> None:
        assert callable(config)
        e = Engine(config())
        first = e.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        second = e.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        assert _waiting(e) == 1 and len(e.upstreams) == 1
        for _ in range(2):   # the same address fails twice: banned
            status, _, _ = await e.response(e.send("POST", "/api/generate", GENERATE, {"X-API-Key": "wrong"}))
            assert status == 401
        e.upstreams[0][0].data_received(final_line(26, 20))
        assert (await e.response(first))[0] == 200
        status, fields, body = await e.response(second)
        assert status == 429 and json.loads(body)["error"] == "too many failed authentications; try again later"
        assert 0 < int(fields["Retry-After"]) <= 900
        assert len(e.upstreams) == 1 and _waiting(e) == 0   # it never reached the host
        assert e.server.policies.gate.total == 0 and all(h.in_flight == 0 for h in e.server.hosts.hosts.order)
        await e.stop()
    run(scenario)


@pytest.mark.parametrize("config", [_waiting_for_slot, _waiting_for_host], ids=["key_slot", "host"])
def test_a_waiting_generation_whose_key_a_reload_removed_is_refused_when_woken(config: object) -> None:
    async def scenario() -> None:
        assert callable(config)
        cfg = config()
        e = Engine(cfg)
        holder = e.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        waiter = e.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        assert _waiting(e) == 1 and len(e.upstreams) == 1
        e.server.apply_config(replace(cfg, keys=tuple(k for k in cfg.keys if k.name != "laptop")))
        e.upstreams[0][0].data_received(final_line(26, 20))
        assert (await e.response(holder))[0] == 200   # a running request keeps going
        status, _, body = await e.response(waiter)
        assert status == 401 and json.loads(body) == {"error": "unauthorized"}
        assert len(e.upstreams) == 1 and _waiting(e) == 0
        assert e.server.policies.gate.total == 0 and all(h.in_flight == 0 for h in e.server.hosts.hosts.order)
        await e.stop()
    run(scenario)


def _prompts_running(e: Engine) -> list[str]:
    """The prompts of the generations the hosts are working on now."""
    return sorted(json.loads(bytes(t.written).rsplit(b"\r\n\r\n", 1)[1])["prompt"]
                  for c, t in e.upstreams if c.state != 0 and not t.is_closing())


def _answer(e: Engine, prompt: str) -> None:
    conn = next(c for c, t in e.upstreams if c.state != 0 and not t.is_closing()
                and json.loads(bytes(t.written).rsplit(b"\r\n\r\n", 1)[1])["prompt"] == prompt)
    conn.data_received(final_line(26, 20))


def test_a_generation_waiting_for_its_key_slot_takes_the_host_its_slot_frees_before_a_later_key() -> None:
    """One queue: the key's slot and a host are granted together, at one moment, so a request that
    waited for its key's slot is not then sent to wait again, behind a later key, for a host."""
    async def scenario() -> None:
        e = Engine(make_config(11434, keys=_laptop_limited(max_concurrent=1), limits=TrafficLimits(queue_timeout=30.0),
                               upstreams=(UpstreamHost("a", Upstream("127.0.0.1", 11434), max_concurrent=1),
                                          UpstreamHost("b", Upstream("127.0.0.1", 11435), max_concurrent=1))))

        def generate(prompt: str, who: dict[str, str]) -> MemoryTransport:
            return e.send("POST", "/api/generate", json.dumps({"model": "llama3.2", "prompt": prompt}).encode(), who)
        laptop_1 = generate("laptop-1", LAPTOP)      # the laptop's slot, one host
        phone_1 = generate("phone-1", PHONE)         # the other host
        await settle()
        laptop_2 = generate("laptop-2", LAPTOP)      # waits: its key's slot
        await settle()
        phone_2 = generate("phone-2", PHONE)         # waits: a host
        await settle()
        assert _waiting(e) == 2 and _prompts_running(e) == ["laptop-1", "phone-1"]
        _answer(e, "laptop-1")   # its key's slot and its host free at one moment: both to the laptop's second
        assert (await e.response(laptop_1))[0] == 200
        await settle()
        assert _prompts_running(e) == ["laptop-2", "phone-1"] and _waiting(e) == 1
        _answer(e, "phone-1")
        await settle()
        assert _prompts_running(e) == ["laptop-2", "phone-2"]
        _answer(e, "laptop-2")
        _answer(e, "phone-2")
        for client in (phone_1, laptop_2, phone_2):
            assert (await e.response(client))[0] == 200
        await settle()
        assert e.server.policies.gate.total == 0 and all(h.in_flight == 0 for h in e.server.hosts.hosts.order)
        await e.stop()
    run(scenario)


def test_the_single_upstream_is_always_tried_a_refused_connect_is_a_502_never_a_503() -> None:
    """The single `upstream` is a host set of one, placed by the same code as several: down, or
    behind its breaker, it is still tried (as nginx's lone server), and a host named otherwise is 400."""
    async def scenario() -> None:
        e = Engine(make_config(11434, routing=Routing(health_interval=5.0)))
        (member,) = e.server.hosts.members.values()
        tries = []

        async def refused() -> object:
            tries.append(e.loop.time())
            raise ConnectRefused()
        member.pool.connect = refused  # type: ignore[method-assign]
        for _ in range(3):
            for method, target, body in (("GET", "/api/version", None), ("POST", "/api/generate", GENERATE)):
                status, _, reply = await e.response(e.send(method, target, body, LAPTOP))
                assert status == 502 and json.loads(reply) == {"error": "upstream unavailable"}
        assert len(tries) == 6 and not member.host.up   # down by its refusals, and tried all the same
        status, _, _ = await e.response(e.send("GET", "/api/version", None,
                                               {**OWNER, "X-Guardproxy-Upstream": "gpu-b"}))
        assert status == 400
        await e.stop()
    run(scenario)
