"""Several Ollama hosts behind one gate: each routing rule, seen in what each fake host recorded.

Fake hosts listen on 127.0.0.2, .3 and .4, each with its own models
(/api/tags) and loaded models (/api/ps); the gate checks them every 0.1 s.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import ADMIN_KEY, KEY, Proxy
from guardproxy.config.model import KeyEntry
from guardproxy.config.write import hash_key
from support.hosts import Fakes, Held, fakes, gate, generate, host, models_asked, work  # noqa: F401 (fakes: a fixture)
from support.polling import until
from support.raw_http import fetch


def in_flight(proxy: Proxy) -> dict[str, int]:
    return {m.name: m.host.in_flight for m in proxy.server.hosts.members.values()}


async def test_only_hosts_that_list_the_model_get_it(fakes: Fakes, tmp_path: Path) -> None:
    a = await fakes.start(0, models=["llama3.2"])
    b = await fakes.start(1, models=["qwen3:8b"])
    c = await fakes.start(2, models=["llama3.2", "qwen3:8b"])
    async with gate(tmp_path, (host(0, a), host(1, b), host(2, c))) as proxy:
        for _ in range(4):
            assert (await generate(proxy.port, "qwen3:8b", KEY)).status == 200
        for _ in range(4):
            assert (await generate(proxy.port, "Llama3.2", KEY)).status == 200  # llama3.2:latest
    assert "qwen3:8b" not in models_asked(a) and "Llama3.2" not in models_asked(b)
    # Equally idle hosts take turns (the tie-break rotates over all hosts, so not strictly alternately).
    assert models_asked(b).count("qwen3:8b") >= 1 and models_asked(c).count("qwen3:8b") >= 1
    assert models_asked(a).count("Llama3.2") >= 1 and models_asked(c).count("Llama3.2") >= 1


async def test_warm_with_room_first_then_cold_with_room(fakes: Fakes, tmp_path: Path) -> None:
    cold = await fakes.start(0, models=["m"])
    warm = await fakes.start(1, models=["m"], loaded=["m"])
    async with gate(tmp_path, (host(0, cold), host(1, warm))) as proxy:
        for _ in range(3):
            assert (await generate(proxy.port, "m", KEY)).status == 200
        assert len(work(warm)) == 3 and not work(cold)
        held = [await Held.open(proxy.port, "m", KEY) for _ in range(2)]  # the warm host is full now
        assert len(work(warm)) == 5
        assert (await generate(proxy.port, "m", KEY)).status == 200
        assert len(work(cold)) == 1
        for h in held:
            h.close()


async def test_least_busy_counts_in_flight_against_max_concurrent_times_weight(fakes: Fakes,
                                                                               tmp_path: Path) -> None:
    a = await fakes.start(0, models=["m"])
    b = await fakes.start(1, models=["m"])
    # Shares: a 4 x 1, b 4 x 2.  Each stream goes where in-flight / share is lowest, so b takes two of three.
    async with gate(tmp_path, (host(0, a, 4), host(1, b, 4, weight=2.0))) as proxy:
        held = [await Held.open(proxy.port, "m", KEY) for _ in range(3)]
        assert in_flight(proxy) == {"gpu-a": 1, "gpu-b": 2}
        held += [await Held.open(proxy.port, "m", KEY) for _ in range(3)]
        assert in_flight(proxy) == {"gpu-a": 2, "gpu-b": 4}
        assert len(work(a)) == 2 and len(work(b)) == 4
        for h in held:
            h.close()
        await until(lambda: not any(in_flight(proxy).values()))


async def test_when_every_host_is_full_a_generation_waits_for_the_first_one_that_frees(fakes: Fakes,
                                                                                       tmp_path: Path) -> None:
    warm = await fakes.start(0, models=["m"], loaded=["m"])
    cold = await fakes.start(1, models=["m"])
    async with gate(tmp_path, (host(0, warm, 1), host(1, cold, 1))) as proxy:
        on_warm = await Held.open(proxy.port, "m", KEY)
        on_cold = await Held.open(proxy.port, "m", KEY)
        assert len(work(warm)) == 1 and len(work(cold)) == 1
        # Both at max_concurrent, the warm one too: the third waits in the gate, not on a host.
        waiting = asyncio.ensure_future(generate(proxy.port, "m", KEY))
        await until(lambda: proxy.server.hosts.waiting.queued == 1)
        assert len(work(warm)) == 1 and len(work(cold)) == 1
        on_cold.close()
        assert (await asyncio.wait_for(waiting, 10)).status == 200
        assert len(work(cold)) == 2 and len(work(warm)) == 1
        on_warm.close()


async def test_a_model_no_host_has_gets_one_hosts_own_404(fakes: Fakes, tmp_path: Path) -> None:
    a = await fakes.start(0, models=["m"])
    b = await fakes.start(1, models=["n"])
    async with gate(tmp_path, (host(0, a), host(1, b))) as proxy:
        resp = await generate(proxy.port, "never-pulled:1b", KEY)
    assert resp.status == 404
    assert json.loads(resp.body) == {"error": 'model "never-pulled:1b" not found, try pulling it first'}
    assert len(work(a)) + len(work(b)) == 1  # not tried elsewhere: no host listed it


async def test_a_request_without_a_model_goes_to_a_host_and_admin_routes_to_the_first(fakes: Fakes,
                                                                                      tmp_path: Path) -> None:
    a = await fakes.start(0)
    b = await fakes.start(1)
    async with gate(tmp_path, (host(0, a), host(1, b))) as proxy:
        for _ in range(2):
            assert (await fetch(proxy.port, "GET", "/api/version", headers={"X-API-Key": KEY})).status == 200
        pull = json.dumps({"model": "qwen3:8b", "stream": False}).encode()
        for _ in range(2):
            resp = await fetch(proxy.port, "POST", "/api/pull", pull, {"X-API-Key": ADMIN_KEY})
            assert resp.status == 200
    assert [r.target for r in work(a)].count("/api/version") == 1
    assert [r.target for r in work(b)].count("/api/version") == 1
    assert [r.target for r in work(a)].count("/api/pull") == 2 and "/api/pull" not in [r.target for r in work(b)]


async def test_x_guardproxy_upstream_names_the_host_for_admin_keys_and_never_reaches_ollama(
        fakes: Fakes, tmp_path: Path) -> None:
    a = await fakes.start(0, models=["m"], loaded=["m"])
    b = await fakes.start(1, models=["n"])
    async with gate(tmp_path, (host(0, a), host(1, b))) as proxy:
        pull = json.dumps({"model": "m", "stream": False}).encode()
        resp = await fetch(proxy.port, "POST", "/api/pull", pull,
                           {"X-API-Key": ADMIN_KEY, "X-Guardproxy-Upstream": "gpu-b"})
        assert resp.status == 200
        # Explicit means explicit: gpu-a gets a generation for a model only gpu-b has, and its 404 stands.
        resp = await generate(proxy.port, "n", ADMIN_KEY, **{"X-Guardproxy-Upstream": "gpu-a"})
        assert resp.status == 404 and "not found" in json.loads(resp.body)["error"]
        refused = await generate(proxy.port, "m", KEY, **{"X-Guardproxy-Upstream": "gpu-a"})
        unknown = await generate(proxy.port, "m", ADMIN_KEY, **{"X-Guardproxy-Upstream": "gpu-z"})
    assert refused.status == 403 and "X-Guardproxy-Upstream" in json.loads(refused.body)["error"]
    assert unknown.status == 400
    assert [r.target for r in work(b)] == ["/api/pull"] and models_asked(a) == ["n"]
    assert not any(r.header("x-guardproxy-upstream") for f in (a, b) for r in f.requests)


async def test_merged_listings_each_model_once_ps_with_its_host_and_filtered_per_key(fakes: Fakes,
                                                                                     tmp_path: Path) -> None:
    a = await fakes.start(0, models=["llama3.2", "qwen3:8b"], loaded=["llama3.2"])
    b = await fakes.start(1, models=["llama3.2:latest", "mistral:7b"], loaded=["mistral:7b", "llama3.2"])
    c = await fakes.start(2, models=["gemma2:2b"])
    narrow = "gp_narrow-key-0123456789abcdefghijklmnopqr"
    keys = (KeyEntry("laptop", bytes.fromhex(hash_key(KEY))),
            KeyEntry("narrow", bytes.fromhex(hash_key(narrow)), models=("llama*",)))
    async with gate(tmp_path, (host(0, a), host(1, b), host(2, c)), interval=5.0, keys=keys) as proxy:
        asked = [len(f.requests) for f in (a, b, c)]
        tags = await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": KEY})
        v1 = await fetch(proxy.port, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        ps = await fetch(proxy.port, "GET", "/api/ps", headers={"X-API-Key": KEY})
        mine = await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": narrow})
        head = await fetch(proxy.port, "HEAD", "/api/tags", headers={"X-API-Key": KEY})
        # Fresh enough (under health_interval old): answered from the snapshot, no round trip.
        assert [len(f.requests) for f in (a, b, c)] == asked
        # What the metrics read: every model any host lists, and each host's state.
        assert proxy.server.hosts.models() == {"llama3.2:latest", "qwen3:8b", "mistral:7b", "gemma2:2b"}
        assert [(m.name, m.host.up, m.host.in_flight, m.settings.max_concurrent)
                for m in proxy.server.hosts.members.values()] == [
            ("gpu-a", True, 0, 2), ("gpu-b", True, 0, 2), ("gpu-c", True, 0, 2)]
    assert [m["name"] for m in json.loads(tags.body)["models"]] == ["llama3.2", "qwen3:8b", "mistral:7b",
                                                                   "gemma2:2b"]
    assert [m["id"] for m in json.loads(v1.body)["data"]] == ["llama3.2", "qwen3:8b", "mistral:7b", "gemma2:2b"]
    assert [(m["name"], m["upstream"]) for m in json.loads(ps.body)["models"]] == [
        ("llama3.2", "gpu-a"), ("mistral:7b", "gpu-b"), ("llama3.2", "gpu-b")]
    assert [m["name"] for m in json.loads(mine.body)["models"]] == ["llama3.2"]
    assert head.status == 200 and head.header("content-length") == str(len(tags.body))
    assert tags.header("content-type") == "application/json; charset=utf-8"


async def test_a_keys_cut_of_a_merged_listing_is_kept_until_the_snapshot_changes(fakes: Fakes,
                                                                                   tmp_path: Path) -> None:
    a = await fakes.start(0, models=["llama3.2", "qwen3:8b"])
    narrow = "gp_narrow-key-0123456789abcdefghijklmnopqr"
    keys = (KeyEntry("narrow", bytes.fromhex(hash_key(narrow)), models=("llama*",)),)
    async with gate(tmp_path, (host(0, a),), interval=5.0, keys=keys) as proxy:
        hosts = proxy.server.hosts
        first = await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": narrow})
        assert (b"/api/tags", ("llama*",), False) in hosts.listings
        assert (await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": narrow})).body == first.body
        hosts.members["gpu-a"].host.set_tags([{"name": "llama3.3"}, {"name": "qwen3:8b"}])
        hosts.snapshot_changed()   # what a fresh /api/tags does
        after = await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": narrow})
    assert [m["name"] for m in json.loads(first.body)["models"]] == ["llama3.2"]
    assert [m["name"] for m in json.loads(after.body)["models"]] == ["llama3.3"]


async def test_health_rounds_that_change_nothing_keep_what_was_built_from_the_snapshot(fakes: Fakes,
                                                                                        tmp_path: Path) -> None:
    a = await fakes.start(0, models=["llama3.2"], loaded=["llama3.2"])
    async with gate(tmp_path, (host(0, a),), interval=0.05) as proxy:
        hosts = proxy.server.hosts
        assert (await fetch(proxy.port, "GET", "/api/ps", headers={"X-API-Key": KEY})).status == 200
        known = hosts.models()
        await asyncio.wait_for(proxy.server.health.next_round(2), 5)
        assert b"/api/ps" in hosts.listings and hosts.models() is known
        hosts.snapshot_changed()   # (something else changed: the names are the same, so is the object)
        assert hosts.models() is known and known == {"llama3.2:latest"}


async def test_the_access_log_names_the_host(fakes: Fakes, tmp_path: Path) -> None:
    a = await fakes.start(0, models=["m"])
    b = await fakes.start(1, models=["n"])
    async with gate(tmp_path, (host(0, a), host(1, b))) as proxy:
        await generate(proxy.port, "n", KEY)
        await generate(proxy.port, "m", KEY)
        await fetch(proxy.port, "GET", "/api/tags", headers={"X-API-Key": KEY})
        lines = proxy.log_lines()
    assert [(line["path"], line.get("upstream")) for line in lines] == [
        ("/api/generate", "gpu-b"), ("/api/generate", "gpu-a"), ("/api/tags", None)]
