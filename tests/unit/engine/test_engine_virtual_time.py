"""The exchange and its admission driven with memory transports and a clock that jumps
(support/virtual_gate.py): slots and their queue_timeout, budgets re-decided in the queue, a client
that hangs up while queued.  Every deadline checked to the second, none waited for, no socket opened.
The socket tests keep the end-to-end behaviour (test_limits_over_sockets.py: one queue_timeout)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import make_config
from guardproxy.config.model import Ban, Rate, TrafficLimits, Upstream, UpstreamHost
from guardproxy.config.values import parse_budget
from guardproxy.decisions import routes
from support.raw_http import request_bytes
from support.virtual import response, settle
from support.virtual_gate import GENERATE, LAPTOP, OWNER, PHONE, Gate, final_line, generation, run


def one_host(max_concurrent: int) -> tuple[UpstreamHost, ...]:
    return (UpstreamHost("a", Upstream("127.0.0.1", 11434), max_concurrent=max_concurrent),)


def test_a_generation_waits_for_its_slot_queue_timeout_and_no_more() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, limits=TrafficLimits(max_concurrent=1, queue_timeout=30.0)))
        first = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        t0 = g.loop.time()
        second = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await g.until_time(t0 + 29.9)
        assert not second.written and g.waiting() == 1   # still waiting
        status, fields, body = await g.response(second)
        assert (status, fields["Retry-After"]) == (503, "1") and 30.0 <= g.loop.time() - t0 <= 30.1
        assert "busy" in json.loads(body)["error"]
        assert g.waiting() == 0 and "Connection" not in fields   # the body was read: it stays open
        assert len(g.host.work) == 1 and not first.written   # the first still holds the slot
        g.host.work[0].reply(final_line(1, 1))
        assert (await g.response(first))[0] == 200
        third = g.send("POST", "/api/generate", GENERATE, LAPTOP)   # the slot is free again: no wait
        await settle()
        g.host.work[1].reply(final_line(1, 1))
        assert (await g.response(third))[0] == 200 and g.loop.time() - t0 < 30.1
        await g.stop()
    run(scenario)


def test_a_refusal_after_the_body_was_read_keeps_the_connection_for_the_next_request() -> None:
    async def scenario() -> None:
        keys = list(make_config(1).keys)
        keys[1] = replace(keys[1], max_concurrent=1)   # the phone
        g = Gate(make_config(11434, keys=tuple(keys), limits=TrafficLimits(queue_timeout=5.0)))
        g.send("POST", "/api/generate", GENERATE, PHONE)
        await settle()
        conn, client = g.connect()
        conn.data_received(request_bytes("POST", "/api/chat", json.dumps({"model": "llama3.2", "messages": []}).encode(),
                                         PHONE))
        status, fields, _ = await g.response(client)
        assert status == 503 and "Connection" not in fields and not client.is_closing()
        conn.data_received(request_bytes("POST", "/api/generate", GENERATE, OWNER))   # another key: no wait
        await settle()
        g.host.work[-1].reply(final_line(1, 1))
        assert (await g.response(client))[0] == 200
        await g.stop()
    run(scenario)


FORM_CT = "multipart/form-data; boundary=xXx"


def body_for(route: routes.Route) -> tuple[bytes, dict[str, str]]:
    """A request of `route` naming llama3.2, as its clients send it."""
    if route.model == routes.FORM:
        return (b'--xXx\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF0000WAVE\r\n'
                b'--xXx\r\nContent-Disposition: form-data; name="model"\r\n\r\nllama3.2\r\n--xXx--\r\n',
                {"Content-Type": FORM_CT})
    return json.dumps({"model": "llama3.2", "prompt": "hi", "input": "hi", "max_tokens": 3,
                       "messages": [{"role": "user", "content": "hi"}]}).encode(), {}


GENERATION_ROUTES = {r.path.decode(): r for r in routes.ROUTES if r.generation}


@pytest.mark.parametrize("path", sorted(GENERATION_ROUTES))
def test_each_generation_route_takes_a_slot(path: str) -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, limits=TrafficLimits(max_concurrent=1, queue_timeout=20.0)))
        body, headers = body_for(GENERATION_ROUTES[path])
        holder = g.send("POST", path, body, {**LAPTOP, **headers})
        await settle()
        assert len(g.host.work) == 1   # it holds the only slot
        other = "/api/chat" if path != "/api/chat" else "/api/generate"
        t0 = g.loop.time()
        other_body, other_headers = body_for(GENERATION_ROUTES[other])
        waiting = g.send("POST", other, other_body, {**LAPTOP, **other_headers})
        status, fields, _ = await g.response(waiting)
        assert (status, fields["Retry-After"]) == (503, "1") and 20.0 <= g.loop.time() - t0 <= 20.1
        assert len(g.host.work) == 1
        g.host.work[0].reply(response(200, b"{}"))
        assert (await g.response(holder))[0] == 200
        freed = g.send("POST", other, other_body, {**LAPTOP, **other_headers})
        await settle()
        assert len(g.host.work) == 2   # the slot was given back
        g.host.work[1].reply(response(200, b"{}"))
        assert (await g.response(freed))[0] == 200
        await g.stop()
    run(scenario)


def test_a_waiting_generation_is_decided_again_when_its_slot_frees() -> None:
    async def scenario() -> None:
        keys = list(make_config(1).keys)
        keys[0] = replace(keys[0], tokens=parse_budget("100/day"), max_concurrent=1)
        g = Gate(make_config(11434, keys=tuple(keys)))
        first = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        second = g.send("POST", "/api/generate", GENERATE, LAPTOP)   # its 20 + 21 fit beside the first's: it waits
        await settle()
        assert g.waiting() == 1 and len(g.host.work) == 1
        g.host.work[0].reply(final_line(26, 40))   # 66 spent: 41 more no longer fit
        assert (await g.response(first))[0] == 200
        status, _, body = await g.response(second)
        assert status == 429 and json.loads(body) == {"error": "token budget exceeded"}
        assert len(g.host.work) == 1   # it never reached a host
        await g.stop()
    run(scenario)


def test_a_generation_waits_queue_timeout_in_all_through_the_slot_and_host_queues() -> None:
    """One queue for a key's slot and a host: a request that waited for its key's slot gets the host
    with it, in its turn, and no request waits more than queue_timeout in all."""
    async def scenario() -> None:
        keys = list(make_config(1).keys)
        keys[0] = replace(keys[0], max_concurrent=1)
        g = Gate(make_config(11434, keys=tuple(keys), limits=TrafficLimits(queue_timeout=30.0), upstreams=one_host(1)))
        first = g.send("POST", "/api/generate", GENERATE, LAPTOP)   # holds the laptop's slot and the host
        await settle()
        t0 = g.loop.time()
        second = g.send("POST", "/api/generate", GENERATE, LAPTOP)  # waits for the laptop's slot
        await g.until_time(t0 + 20.0)
        third = g.send("POST", "/api/generate", GENERATE, PHONE)    # waits for the host
        await g.until_time(t0 + 25.0)
        g.host.work[0].reply(final_line(26, 20))   # slot and host, freed at one moment, go to the second
        assert (await g.response(first))[0] == 200
        await settle()
        assert len(g.host.work) == 2 and g.waiting() == 1   # the second runs; the third still waits
        status, _, _ = await g.response(third)
        assert status == 503 and 50.0 <= g.loop.time() - t0 <= 50.1   # 30 s after it came, not more
        assert g.waiting() == 0
        g.host.work[-1].reply(final_line(26, 20))
        assert (await g.response(second))[0] == 200
        await g.stop()
    run(scenario)


def test_a_client_that_hangs_up_in_the_slot_queue_leaves_it_at_once() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, limits=TrafficLimits(max_concurrent=1, max_queue=2, queue_timeout=300.0)))
        holder = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        for _ in range(4):   # more than max_queue: each gave its place up before the next came
            ghost = g.send("POST", "/api/generate", GENERATE, LAPTOP)
            await settle()
            assert g.waiting() == 1
            t0 = g.loop.time()
            ghost.hang_up()
            await settle()
            assert g.waiting() == 0 and g.loop.time() == t0   # at once, not at queue_timeout
        live = g.send("POST", "/api/generate", GENERATE, PHONE)
        await settle()
        assert g.waiting() == 1   # queued, not refused as over max_queue
        g.host.work[0].reply(final_line(1, 1))
        assert (await g.response(holder))[0] == 200
        await settle()
        g.host.work[1].reply(final_line(1, 1))
        assert (await g.response(live))[0] == 200
        assert len(g.host.work) == 2   # the ghosts opened nothing upstream
        await settle()
        statuses = [line["status"] for line in g.log.lines]
        assert statuses.count(499) == 4 and statuses.count(200) == 2
        assert {line["outcome"] for line in g.log.lines if line["status"] == 499} == {"client_gone"}
        await g.stop()
    run(scenario)


def test_a_client_that_hangs_up_in_the_host_queue_leaves_it_at_once() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, limits=TrafficLimits(queue_timeout=300.0), upstreams=one_host(1)))
        holder = g.send("POST", "/api/generate", GENERATE, LAPTOP)
        await settle()
        ghost = g.send("POST", "/api/generate", GENERATE, PHONE)
        await settle()
        assert g.waiting() == 1
        ghost.hang_up()
        await settle()
        assert g.waiting() == 0
        g.host.work[0].reply(final_line(1, 1))
        assert (await g.response(holder))[0] == 200
        after = g.send("POST", "/api/generate", GENERATE, PHONE)   # the host's slot was not lost to the ghost
        await settle()
        assert len(g.host.work) == 2
        g.host.work[1].reply(final_line(1, 1))
        assert (await g.response(after))[0] == 200
        await g.stop()
    run(scenario)


def test_a_host_with_room_goes_to_the_waiting_keys_by_their_weights() -> None:
    async def scenario() -> None:
        keys = list(make_config(1).keys)
        keys[0] = replace(keys[0], weight=4)   # the laptop; the phone keeps weight 1
        g = Gate(make_config(11434, keys=tuple(keys), upstreams=one_host(1)))
        g.send("POST", "/api/generate", generation(prompt="first"), LAPTOP)
        await settle()
        for _ in range(10):
            g.send("POST", "/api/generate", generation(prompt="laptop"), LAPTOP)
            g.send("POST", "/api/generate", generation(prompt="phone"), PHONE)
        await settle()
        assert g.waiting() == 20
        order = []
        for _ in range(11):
            (running,) = g.host.pending   # one at a time: max_concurrent 1
            order.append(running.json()["prompt"][0])
            running.reply(final_line(1, 1))
            await settle()
        assert "".join(order) == "f" + "llllp" * 2
        await g.stop()
    run(scenario)


# --- rates and bans, on the same clock ------------------------------------------------------------

def test_a_key_over_its_rate_gets_429_until_its_window_has_passed() -> None:
    async def scenario() -> None:
        keys = list(make_config(1).keys)
        keys[0] = replace(keys[0], rate=Rate(2, 60.0))
        g = Gate(make_config(11434, keys=tuple(keys)))

        async def version(who: dict[str, str]) -> tuple[int, dict[str, str]]:
            status, fields, _ = await g.response(g.send("GET", "/api/version", None, who))
            return status, fields
        t0 = g.loop.time()
        assert [(await version(LAPTOP))[0] for _ in range(2)] == [200, 200]
        status, fields = await version(LAPTOP)
        assert (status, fields["Retry-After"]) == (429, "30")   # 2 a minute: the next one in 30 s
        assert (await version(PHONE))[0] == 200   # another key is not held back
        await g.until_time(t0 + 29.5)
        status, fields = await version(LAPTOP)
        assert (status, fields["Retry-After"]) == (429, "1")
        await g.until_time(t0 + 30.0)
        assert (await version(LAPTOP))[0] == 200
        status, fields = await version(LAPTOP)
        assert (status, fields["Retry-After"]) == (429, "30")
        assert len(g.host.requests) == 4   # the refusals never reached the host
        await g.stop()
    run(scenario)


def test_an_address_banned_after_failed_keys_is_let_in_again_after_the_ban() -> None:
    async def scenario() -> None:
        g = Gate(make_config(11434, ban=Ban(after_failures=3, window=600.0, duration=900.0)))
        for _ in range(3):
            assert (await g.response(g.send("GET", "/api/tags", None, {"X-API-Key": "gp_guess-" + "x" * 30})))[0] == 401
        t0 = g.loop.time()
        status, fields, _ = await g.response(g.send("GET", "/api/tags", None, LAPTOP))   # even the right key
        assert (status, fields["Retry-After"]) == (429, "900")
        await g.until_time(t0 + 899.0)
        status, fields, _ = await g.response(g.send("GET", "/api/tags", None, LAPTOP))
        assert (status, fields["Retry-After"]) == (429, "1")
        await g.until_time(t0 + 900.0)
        assert (await g.response(g.send("GET", "/api/tags", None, LAPTOP)))[0] == 200
        assert [s.target for s in g.host.requests] == [b"/api/tags"]
        await g.stop()
    run(scenario)
